"""The eval runner on synthetic data: oracle and constant-choice models, resumption, sharding, bad inputs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from echo.eval.datasets import BenchmarkError, load_benchmark
from echo.eval.runner import RunConfig, merge_and_score, read_predictions, run_eval, shard_items, shard_path
from echo.answers import string_match
from helpers import NON_SPEECH, AnswerOracle, synthetic_benchmark



@dataclass
class Out:
    text: str


def Oracle(bench) -> AnswerOracle:
    return AnswerOracle.for_benchmark(bench)


class ConstantA:
    """Always answers with option letter A (the first choice): a chance-level baseline."""

    def generate(self, requests, sampling_params=None):
        return [Out("<think>no idea</think><answer>A</answer>") for _ in requests]


class Crashing(AnswerOracle):
    """Dies on its ``crash_at``-th call, after earlier batches were written."""

    def __init__(self, bench, crash_at):
        super().__init__({item.id: item.answer for item in bench.items})
        self.calls, self.crash_at = 0, crash_at

    def generate(self, requests, sampling_params=None):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return super().generate(requests, sampling_params)


@pytest.fixture(scope="module")
def synth100(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth100")
    return synthetic_benchmark(out, 100, 7)


@pytest.fixture
def synth10(tmp_path):
    return synthetic_benchmark(tmp_path / "data", 10, 3, difficulties=("easy",))


def _cfg(**kw):
    return RunConfig(progress=False, **kw)


def test_oracle_scores_100_percent(synth100, tmp_path):
    report = run_eval(synth100, Oracle(synth100), tmp_path, _cfg(batch_size=16))
    assert report.generated == 100 and report.score is not None
    assert (report.score.overall.correct, report.score.overall.total, report.score.overall.no_answer) == (100, 100, 0)
    assert set(report.score.breakdown["task"]) == set(NON_SPEECH)
    assert set(report.score.breakdown["difficulty"]) == {"easy", "medium", "hard"}
    merged = json.loads((tmp_path / "predictions.json").read_text())
    assert [r["id"] for r in merged] == [item.id for item in synth100.items]  # benchmark order
    assert all(r["model_output"] == r["answer"] and r["response"].startswith("<think>") for r in merged)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overall"]["accuracy"] == 1.0
    assert "100.00%" in (tmp_path / "summary.md").read_text()


def test_constant_choice_is_at_chance(synth100, tmp_path):
    report = run_eval(synth100, ConstantA(), tmp_path, _cfg(batch_size=32))
    expected = sum(item.answer == item.choices[0] for item in synth100.items)  # counted straight from the data
    assert report.score.overall.correct == expected
    assert abs(report.score.overall.accuracy - 0.25) <= 0.10  # 4 choices; 100 items: sd 0.043
    merged = json.loads((tmp_path / "predictions.json").read_text())
    assert all(r["model_output"] == r["choices"][0] and r["extraction"] == "answer_tag/letter" for r in merged)


def test_interrupted_run_loses_no_finished_batch_and_resumes(synth10, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_eval(synth10, Crashing(synth10, crash_at=3), tmp_path, _cfg(batch_size=3))
    done = read_predictions(tmp_path)
    assert list(done) == [item.id for item in synth10.items[:6]]  # two full batches were on disk
    assert not (tmp_path / "predictions.json").exists()

    # A kill mid-write leaves a partial line: it is ignored and cut before the next append.
    with open(shard_path(tmp_path, 0, 1), "a", encoding="utf-8") as f:
        f.write('{"id": "' + synth10.items[6].id + '", "model_out')
    resumed = Oracle(synth10)
    report = run_eval(synth10, resumed, tmp_path, _cfg(batch_size=3))
    assert resumed.requests == [item.id for item in synth10.items[6:]]  # only the unfinished items
    assert (report.generated, report.skipped) == (4, 6)
    assert report.score.overall.correct == report.score.overall.total == 10
    with open(shard_path(tmp_path, 0, 1), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 10 and all(json.loads(line)["id"] for line in lines)


def test_sharded_run_merges_when_last_shard_finishes(synth10, tmp_path, monkeypatch):
    assert [i.id for i in shard_items(synth10.items, 1, 3)] == [synth10.items[k].id for k in (1, 4, 7)]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    first = run_eval(synth10, Oracle(synth10), tmp_path, _cfg(batch_size=2))
    assert first.score is None and first.generated == 5  # rank 0 of 2: items 0, 2, 4, 6, 8
    monkeypatch.setenv("RANK", "1")
    oracle = Oracle(synth10)
    second = run_eval(synth10, oracle, tmp_path, _cfg(batch_size=2))
    assert oracle.requests == [synth10.items[k].id for k in (1, 3, 5, 7, 9)]
    assert second.score.overall.total == 10 and second.score.overall.correct == 10
    assert os.path.exists(shard_path(tmp_path, 0, 2)) and os.path.exists(shard_path(tmp_path, 1, 2))
    # A rerun with a different world size finds nothing left to do.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    third = run_eval(synth10, Oracle(synth10), tmp_path, _cfg())
    assert third.generated == 0 and third.score.overall.total == 10


def test_bad_rank_environment_is_a_clear_error(monkeypatch):
    from echo.errors import ConfigError

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK=2"):
        RunConfig()


def test_missing_and_corrupt_audio_listed_before_any_generation(synth10, tmp_path):
    os.remove(synth10.items[2].audio_path)
    with open(synth10.items[5].audio_path, "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    model = Oracle(synth10)
    with pytest.raises(BenchmarkError) as err:
        run_eval(synth10, model, tmp_path / "out", _cfg())
    msg = str(err.value)
    assert "2 of 10 audio files" in msg
    assert f"{synth10.items[2].id}: {synth10.items[2].audio_path} (file not found)" in msg
    assert synth10.items[5].id in msg and "cannot read" in msg
    assert model.requests == []


def test_model_returning_wrong_count_is_an_error(synth10, tmp_path):
    class Short:
        def generate(self, requests, sampling_params=None):
            return ["x"] * (len(requests) - 1)

    with pytest.raises(RuntimeError, match="returned 2 results for 3 requests"):
        run_eval(synth10, Short(), tmp_path, _cfg(batch_size=3))


def test_limit_and_messages_prompt_style(synth10, tmp_path):
    captured = []

    class Recorder(AnswerOracle):
        def generate(self, requests, sampling_params=None):
            captured.extend(requests)
            assert sampling_params == {"temperature": 0.0}  # passed through untouched
            return super().generate(requests, sampling_params)

    report = run_eval(synth10, Recorder(Oracle(synth10).answers), tmp_path, _cfg(limit=4, prompt_style="messages"),
                      sampling_params={"temperature": 0.0})
    assert len(captured) == 4 and report.score.overall.total == 4
    content = captured[0].prompt[0]["content"]
    assert content[0] == {"type": "audio", "audio": synth10.items[0].audio_path}
    assert content[1]["text"].startswith(synth10.items[0].question + " Choose the answer from [")


def test_mmau_test_without_answers_writes_predictions_but_scores_nothing(tmp_path):
    rows = [{"id": f"t{i}", "audio_id": f"./test-audios/t{i}.wav", "question": "Q?", "choices": ["x", "y"],
             "dataset": "d", "task": "sound", "split": "test", "category": "Reasoning", "sub-category": "s",
             "difficulty": "easy"} for i in range(3)]
    (tmp_path / "mmau-test.json").write_text(json.dumps(rows))
    bench = load_benchmark("mmau-test", tmp_path)
    assert all(item.answer is None for item in bench.items)
    _, score = merge_and_score(bench, tmp_path / "out")  # nothing predicted yet
    assert score.not_predicted == 3 and score.overall.total == 0
    records = [{**r, "model_output": "x"} for r in rows]
    from echo.eval.scoring import score_records

    s = score_records(records, "mmau-test")
    assert s.no_ground_truth == 3 and s.overall.total == 0
    assert string_match("x", "x", ["x", "y"])


def test_engine_results_record_relistens_tokens_and_seconds(synth10, tmp_path):
    """With the engine's results, each prediction says how many spans were re-listened to (inserted, not merely
    cited), how many tokens were sampled and how long the request took."""
    from types import SimpleNamespace

    from echo.engine.outputs import GenerationResult, SampleOutput

    class Engine:
        def generate(self, requests, sampling_params=None):
            inserted = [SimpleNamespace(inserted=True), SimpleNamespace(inserted=False)]
            sample = SampleOutput("<think><seg>1, 2</seg></think><answer>A</answer>", [5, 6, 7, 8], [1, 0, 1, 1],
                                  None, inserted, "stop")
            return [GenerationResult(i, [], [sample], 0.25) for i in range(len(requests))]

    run_eval(synth10, Engine(), tmp_path, _cfg(batch_size=4))
    records = list(read_predictions(tmp_path).values())
    assert len(records) == 10
    assert all((r["relistens"], r["generated_tokens"], r["seconds"]) == (1, 3, 0.25) for r in records)
