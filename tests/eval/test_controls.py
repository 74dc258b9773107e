"""Controls in ``echo eval``: the silence and shuffled audio, one mode per output directory, ``--compare`` with the
paired McNemar test, and the chance / grounding numbers of summary.json."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import soundfile as sf

from echo.audio import load as load_audio
from echo.cli import main
from echo.errors import ConfigError
from echo.eval.compare import compare, read_records
from echo.eval.datasets import EvalItem
from echo.eval.runner import RunConfig, derangement, read_predictions, run_eval, silence_like
from echo.eval.scoring import score_records
from echo.stats import mcnemar, wilson
from helpers import AnswerOracle, synthetic_benchmark


class Recorder(AnswerOracle):
    """The oracle, keeping every request it was sent (id -> audio)."""

    def __init__(self, bench):
        super().__init__({item.id: item.answer for item in bench.items})
        self.audio = {}

    def generate(self, requests, sampling_params=None):
        self.audio.update((r.id, r.audio) for r in requests)
        return super().generate(requests, sampling_params)


@pytest.fixture
def synth(tmp_path):
    return synthetic_benchmark(tmp_path / "data", 8, 5, difficulties=("easy",))


def _cfg(**kw):
    return RunConfig(progress=False, **kw)


def test_silence_sends_zeros_as_long_as_each_clip(synth, tmp_path):
    model = Recorder(synth)
    report = run_eval(synth, model, tmp_path / "out", _cfg(audio="silence", batch_size=3))
    assert report.generated == 8 and set(model.audio) == {item.id for item in synth.items}
    for item in synth.items:
        wave = model.audio[item.id]
        assert isinstance(wave, np.ndarray) and wave.dtype == np.float32 and wave.ndim == 1
        assert len(wave) == sf.info(item.audio_path).frames == len(load_audio(item.audio_path, max_seconds=None))
        assert not wave.any()
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert all(r["audio_control"] == {"mode": "silence"} for r in records)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["audio_control"] == "silence"


def test_silence_length_matches_the_resampled_clip(tmp_path):
    for rate, frames in ((22050, 22050 * 3 + 7), (44100, 44100 + 1), (8000, 12345)):
        path = tmp_path / f"{rate}.wav"
        sf.write(path, np.full(frames, 0.1, dtype=np.float32), rate)
        assert len(silence_like(str(path))) == len(load_audio(str(path), max_seconds=None)), rate


def _items(paths):
    return [EvalItem(f"i{k}", p, "?", ["a", "b"], "a", {"id": f"i{k}"}) for k, p in enumerate(paths)]


def test_shuffled_is_a_seeded_derangement():
    items = _items([f"/a/{k}.wav" for k in range(9)])
    plan = derangement(items, seed=3)
    assert set(plan) == {i.id for i in items}
    assert sorted(d.id for d in plan.values()) == sorted(plan)  # a permutation: every clip is heard once
    assert all(plan[i.id].id != i.id for i in items)  # no item keeps its own clip
    assert {k: d.id for k, d in derangement(items, seed=3).items()} == {k: d.id for k, d in plan.items()}
    assert {k: d.id for k, d in derangement(items, seed=4).items()} != {k: d.id for k, d in plan.items()}
    # several questions about one clip (as in MMAU): none hears its own file under another item's id
    shared = _items(["/a/x.wav"] * 3 + ["/a/y.wav"] * 2 + ["/a/z.wav"] * 2)
    for seed in range(20):
        plan = derangement(shared, seed)
        assert all(plan[i.id].audio_path != i.audio_path for i in shared)
        assert sorted(d.id for d in plan.values()) == sorted(plan)
    with pytest.raises(ConfigError, match="needs at least 2 items"):
        derangement(items[:1], 0)
    with pytest.raises(ConfigError, match="3 of 4 items share one audio file"):
        derangement(_items(["/a/x.wav"] * 3 + ["/a/y.wav"]), 0)


def test_shuffled_is_the_same_across_ranks(synth, tmp_path, monkeypatch):
    expected = derangement(synth.items, seed=11)
    heard = {}
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in (2, 0, 1):
        monkeypatch.setenv("RANK", str(rank))
        model = Recorder(synth)
        report = run_eval(synth, model, tmp_path / "out", _cfg(audio="shuffled", shuffle_seed=11, batch_size=2))
        assert set(model.audio) == {item.id for item in synth.items[rank::3]}  # only this rank's items
        heard.update(model.audio)
    assert report.score is not None and report.score.audio_control == "shuffled"
    assert heard == {item.id: expected[item.id].audio_path for item in synth.items}
    assert all(heard[item.id] != item.audio_path for item in synth.items)
    records = read_predictions(tmp_path / "out")
    assert {k: r["audio_control"] for k, r in records.items()} == {
        item.id: {"mode": "shuffled", "from": expected[item.id].id} for item in synth.items}


def test_one_output_directory_never_mixes_modes(synth, tmp_path, capsys):
    out = tmp_path / "out"
    run_eval(synth, Recorder(synth), out, _cfg(audio="silence", limit=4))
    with pytest.raises(ConfigError, match="holds --audio silence predictions; this run asks for --audio original"):
        run_eval(synth, Recorder(synth), out, _cfg())
    data = str(synth.audio_root)
    assert main(["eval", "--benchmark", "synthetic", "--data", data, "--model", "m", "--out", str(out),
                 "--audio", "shuffled"]) == 2  # refused before the model loads ("m" does not exist)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--audio silence" in err and "--audio shuffled" in err
    # shuffled with another seed would give the finished items other clips than the rest: refused too
    shuffled = tmp_path / "shuffled"
    run_eval(synth, Recorder(synth), shuffled, _cfg(audio="shuffled", shuffle_seed=1, limit=4))
    with pytest.raises(ConfigError, match="another derangement"):
        run_eval(synth, Recorder(synth), shuffled, _cfg(audio="shuffled", shuffle_seed=2, limit=4))
    assert run_eval(synth, Recorder(synth), out, _cfg(audio="silence")).generated == 4  # same mode: resumes


def test_run_config_and_flag():
    with pytest.raises(ConfigError, match="audio must be one of original, silence, shuffled"):
        RunConfig(audio="noise", rank=0, world_size=1)
    assert RunConfig(rank=0, world_size=1).audio == "original"
    with pytest.raises(SystemExit):  # argparse's choices
        main(["eval", "--benchmark", "mmar", "--model", "m", "--audio", "noise"])


def test_silence_through_the_engine(tmp_path):
    """The engine takes a request's audio as an array: silence as an array and as a silent wav file give the same
    tokens, and the records carry the engine's numbers."""
    import echo

    model_dir, data = tmp_path / "tiny", tmp_path / "synth"
    assert main(["make-tiny", str(model_dir)]) == 0
    bench = synthetic_benchmark(data, 2, 1, families=("beep_count",))
    model = echo.load(model_dir)

    class Checked:
        def generate(self, requests, sampling_params=None):
            results = model.generate(list(requests), sampling_params)
            assert [r.error for r in results] == [None] * len(requests)
            return results

    params = echo.SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    run_eval(bench, Checked(), tmp_path / "out", _cfg(audio="silence"), params)
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [r["audio_control"] for r in records] == [{"mode": "silence"}] * 2
    assert all(r["generated_tokens"] == 6 and "relistens" in r for r in records)
    item = bench.items[0]
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(sf.info(item.audio_path).frames, dtype=np.float32), 16000, subtype="FLOAT")
    from echo.protocol import build_prompt

    from_file = model.generate(str(silent), build_prompt(item.question, item.choices), temperature=0,
                               max_new_tokens=6, ignore_eos=True)
    assert records[0]["response"] == from_file.text


# ---- --compare ---------------------------------------------------------------------------------------------------

CHOICES = ["Man", "Woman", "Child", "Robot"]
# (task, this run right, other run right): sound 4 vs 0 discordant, music 1 vs 1; overall 5 vs 1
PATTERN = [("sound", 1, 1), ("sound", 1, 0), ("sound", 1, 0), ("sound", 1, 0), ("sound", 1, 0), ("sound", 0, 0),
           ("sound", 0, 0), ("sound", 1, 1), ("music", 1, 0), ("music", 0, 1), ("music", 0, 0), ("music", 1, 1)]


def _rec(i, task, right, **over):
    rec = {"id": f"q{i}", "audio_id": f"./a/q{i}.wav", "question": "?", "choices": CHOICES, "answer": "Man",
           "task": task, "difficulty": "easy", "sub-category": "s", "model_output": "Man" if right else "Woman"}
    rec.update(over)
    return rec


@pytest.fixture
def pair(tmp_path):
    this = [_rec(i, t, a) for i, (t, a, _) in enumerate(PATTERN)] + [_rec(98, "sound", 1)]
    other = [_rec(i, t, b) for i, (t, _, b) in enumerate(PATTERN)] + [_rec(99, "music", 0)]
    this_path, other_path = tmp_path / "this.json", tmp_path / "other.json.gz"
    this_path.write_text(json.dumps(this))
    other_path.write_bytes(gzip.compress(json.dumps(other).encode()))
    return this_path, other_path


def test_compare_counts_discordant_items_and_mcnemar_p(pair, tmp_path, capsys):
    this, other = pair
    out = tmp_path / "o"
    assert main(["eval", "--benchmark", "mmau-test-mini", "--predictions", str(this), "--compare", str(other),
                 "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["by"] == "task" and (result["only_in_this"], result["only_in_other"]) == (1, 1)
    o, sound, music = result["overall"], result["groups"]["sound"], result["groups"]["music"]
    # exact two-sided McNemar by hand: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)
    assert (o["items"], o["only_this_correct"], o["only_other_correct"]) == (12, 5, 1)
    assert o["p"] == pytest.approx(2 * (1 + 6) / 2 ** 6)  # 0.21875
    assert (o["accuracy"], o["other_accuracy"]) == (pytest.approx(8 / 12), pytest.approx(4 / 12))
    assert (sound["items"], sound["only_this_correct"], sound["only_other_correct"]) == (8, 4, 0)
    assert sound["p"] == pytest.approx(2 / 2 ** 4)  # 0.125
    assert (music["only_this_correct"], music["only_other_correct"], music["p"]) == (1, 1, 1.0)
    printed = capsys.readouterr().out
    assert "| all | 12 | 66.67 | 33.33 | 5 | 1 | 0.2188 |" in printed
    assert "| sound | 8 | 75.00 | 25.00 | 4 | 0 | 0.125 |" in printed
    assert (out / "compare.md").read_text() in printed
    # an echo eval output directory (its predictions.json) compares the same; the reverse swaps the counts
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "predictions.json").write_text(this.read_text())
    back = compare(read_records(other), read_records(tmp_path / "run"), "mmau-test-mini")
    assert (back["overall"]["only_this_correct"], back["overall"]["only_other_correct"]) == (1, 5)


def test_model_run_compared_with_its_control(synth, tmp_path, monkeypatch, capsys):
    from echo.eval import cli

    class Deaf(Recorder):  # right only when it hears the item's own clip
        def __init__(self, bench):
            super().__init__(bench)
            self.paths = {item.id: item.audio_path for item in bench.items}

        def generate(self, requests, sampling_params=None):
            outs = super().generate(requests, sampling_params)
            for r, out in zip(requests, outs):
                if not (isinstance(r.audio, str) and r.audio == self.paths[r.id]):
                    out.text = "<answer>no idea</answer>"
            return outs

    monkeypatch.setattr(cli, "load_model", lambda path: Deaf(synth))
    base = ["eval", "--benchmark", "synthetic", "--data", str(synth.audio_root), "--model", "m", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "orig")]) == 0
    assert main([*base, "--out", str(tmp_path / "silent"), "--audio", "silence", "--compare",
                 str(tmp_path / "orig")]) == 0
    result = json.loads((tmp_path / "silent" / "compare.json").read_text())
    o = result["overall"]
    assert (o["items"], o["accuracy"], o["other_accuracy"], o["only_this_correct"], o["only_other_correct"]) == (
        8, 0.0, 1.0, 0, 8)
    assert o["p"] == pytest.approx(2 / 2 ** 8)
    assert "| all | 8 | 0.00 | 100.00 | 0 | 8 | 0.007812 |" in capsys.readouterr().out


def test_compare_errors_are_one_line(pair, tmp_path, capsys):
    this, other = pair

    def error(*argv):
        assert main(["eval", "--benchmark", "mmau-test-mini", "--predictions", str(this), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("echo eval: error: ") and err.count("\n") == 1
        return err

    assert "predictions file not found" in error("--compare", str(tmp_path / "nope.json"))
    (tmp_path / "empty_dir").mkdir()
    assert "no predictions.json in this directory" in error("--compare", str(tmp_path / "empty_dir"))
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps([_rec(i + 100, "sound", 1) for i in range(3)]))
    assert "no shared ids" in error("--compare", str(elsewhere))
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps([_rec(0, "sound", 1), _rec(1, "sound", 1, answer="Woman")]))
    assert "mismatched predictions files: item 'q1' has answer 'Man'" in error("--compare", str(moved))
    reordered = tmp_path / "reordered.json"
    reordered.write_text(json.dumps([_rec(0, "sound", 1, choices=CHOICES[::-1])]))
    assert "mismatched predictions files: item 'q0' has choices" in error("--compare", str(reordered))


def test_compare_on_the_kept_ablation_predictions():
    """The gzipped prediction files kept in experiments/ read as they are; the p is stats.mcnemar's."""
    from pathlib import Path

    from echo.answers import string_match

    root = Path(__file__).resolve().parents[2] / "experiments" / "ablation" / "predictions"
    a, c = read_records(root / "A-aligned-seed1.json.gz"), read_records(root / "C-sft-seed1.json.gz")
    result = compare(c, a, "synthetic")

    def right(recs):
        return {r["id"]: string_match(r["answer"], r["model_output"] or "", r["choices"]) for r in recs}

    gain, loss, p = mcnemar(right(c), right(a))
    o = result["overall"]
    assert (o["items"], o["only_this_correct"], o["only_other_correct"], o["p"]) == (len(a), gain, loss, p)
    assert sum(g["items"] for g in result["groups"].values()) == len(a)


# ---- summary.json: chance, interval, grounding -------------------------------------------------------------------


def _synth_rec(i, task, choices, right, response, spans, relistens=None):
    rec = {"id": f"s{i}", "audio": f"audio/s{i}.wav", "question": "?", "choices": choices, "answer": choices[0],
           "task": task, "difficulty": "easy", "spans": spans, "model_output": choices[0] if right else choices[1],
           "response": response}
    if relistens is not None:
        rec["relistens"] = relistens
    return rec


def test_summary_carries_chance_interval_and_grounding(tmp_path):
    from echo.eval.runner import write_summary

    four, two = ["a", "b", "c", "d"], ["x", "y"]
    records = [
        # cites [1, 2] against truth [1, 3] (IoU 0.5) and [5, 6] (no overlap: IoU 0)
        _synth_rec(0, "count", four, True, "<seg>1.0, 2.0</seg> then <seg>5, 6</seg><answer>a</answer>", [[1, 3]], 2),
        # cites [1, 3] against truth [1, 3] and [8, 9] (best: IoU 1)
        _synth_rec(1, "count", four, False, "<seg>1, 3</seg><answer>b</answer>", [[8, 9], [1, 3]], 1),
        _synth_rec(2, "order", two, True, "<answer>x</answer>", [[0, 1]], 0),  # cites nothing
        _synth_rec(3, "order", two, True, "<seg>oops</seg><answer>x</answer>", [[0, 1]]),  # unparsable: not cited
    ]
    score = score_records(records, "synthetic")
    write_summary(score, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert {"benchmark", "overall", "not_predicted", "no_ground_truth", "breakdown", "paper_row"} <= set(s)
    assert (s["overall"]["correct"], s["overall"]["total"]) == (3, 4)
    assert s["overall"]["chance"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5) / 4)
    assert s["breakdown"]["task"]["count"]["chance"] == 0.25 and s["breakdown"]["task"]["order"]["chance"] == 0.5
    lo, hi = wilson(3, 4)
    assert s["overall"]["ci95"] == [lo, hi] and lo < 0.75 < hi
    assert s["spans_cited_per_answer"] == 3 / 4
    assert s["span_iou"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["span_hit_rate"] == pytest.approx(2 / 3)
    assert s["relistens_per_answer"] == 1.0  # (2 + 1 + 0) / 3 records written from the engine's results
    assert s["audio_control"] == "original"
    md = (tmp_path / "summary.md").read_text()
    assert "chance 37.5%" in md and "span IoU 0.500" in md and "Re-listens per answer: 1.00" in md
    assert "| count | 50.00 | 25.0 | 1 | 2 | 0 |" in md
    # without spans or the engine's counts there is nothing to say: None, not 0
    bare = score_records([{k: v for k, v in r.items() if k not in ("spans", "relistens")} for r in records],
                         "synthetic").as_dict()
    assert bare["span_iou"] is bare["spans_cited_per_answer"] is bare["relistens_per_answer"] is None
    assert math.isclose(bare["overall"]["chance"], s["overall"]["chance"])


def test_oracle_run_summary_has_grounding_numbers(synth, tmp_path):
    run_eval(synth, Recorder(synth), tmp_path, _cfg())
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["spans_cited_per_answer"] == 1.0  # the oracle cites <seg>0.10, 1.00</seg> once per answer
    assert 0.0 <= s["span_iou"] <= 1.0 and s["span_hit_rate"] is not None
    assert s["relistens_per_answer"] is None  # not the engine: no re-listen counts
    assert s["overall"]["chance"] == pytest.approx(
        sum(1 / len(item.choices) for item in synth.items) / len(synth.items))
