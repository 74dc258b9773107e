"""The no-audio audit: planted leaks are caught by the guesser made for them, fair families pass, and the CLI and
``echo data synth`` report it (one-line errors for bad input, a loud warning naming the leaking family)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo.cli import main
from echo.data import synthetic, tasks
from echo.data.audit import BASELINES, LeakWarning, audit
from echo.data.formats import write_eaqa
from echo.data.item import QuestionItem
from echo.data.synthetic import SynthConfig, write_synthetic
from echo.protocol import format_cot
from helpers import NON_SPEECH

NAMES = [f"sound{k}" for k in range(12)]  # a "natural length" per name: sound11 is the longest
WORDS = ["yes", "no", "maybe", "never", "often", "rarely"]


def _item(family: str, n: int, question: str, choices: list[str], answer: str) -> QuestionItem:
    choices, answer = [str(c) for c in choices], str(answer)
    return QuestionItem(f"{family}-{n}", f"audio/{n}.wav", question, choices, answer,
                        cot=format_cot("I listen <seg>0.50, 0.70</seg>.", answer), spans=[[0.5, 0.7]], task=family)


def _split(seed: int, per_family: int = 120) -> list[QuestionItem]:
    """Five families: four with a planted leak and one fair."""
    rng = np.random.default_rng(seed)
    items = []
    for n in range(per_family):
        # position: the answer is always the third choice
        c = list(rng.permutation(WORDS)[:4])
        items.append(_item("position_leak", n, "Which word is heard?", c, c[2]))
        # answer text: "maybe" is offered in every item and is always right
        c = [str(w) for w in rng.permutation([w for w in WORDS if w != "maybe"])[:3]] + ["maybe"]
        items.append(_item("text_leak", n, "Which word is heard?", [c[i] for i in rng.permutation(4)], "maybe"))
        # a name that predicts the answer (the longer recording always wins), in either question order
        a, b = (NAMES[i] for i in rng.choice(len(NAMES), 2, replace=False))
        longer = max(a, b, key=NAMES.index)
        c = [f"the {a}", f"the {b}", "they last equally long", "neither of them is heard"]
        items.append(_item("name_leak", n, f"Which sound lasts longer: the {a} or the {b}?",
                           [c[i] for i in rng.permutation(4)], f"the {longer}"))
        # the order the question names the sounds in: the first named is always right
        a, b = (NAMES[i] for i in rng.choice(len(NAMES), 2, replace=False))
        c = [f"the {a}", f"the {b}", "they start at the same time", "neither of them is heard"]
        items.append(_item("order_leak", n, f"Which comes first: the {a} or the {b}?",
                           [c[i] for i in rng.permutation(4)], f"the {a}"))
        # fair: the answer is any offered word, at any position
        c = [str(w) for w in rng.permutation(WORDS)[:4]]
        items.append(_item("fair", n, "Which word is heard?", c, c[int(rng.integers(0, 4))]))
    return items


def test_each_planted_leak_is_caught_and_a_fair_family_passes():
    report = audit(_split(1), _split(0))
    fam = {f.family: f for f in report.families}
    assert fam["position_leak"].baselines["position prior"] == 1.0
    assert fam["text_leak"].baselines["answer-text prior"] == 1.0
    assert fam["name_leak"].baselines["text classifier"] > 0.85  # the name alone, learned from train
    assert fam["order_leak"].baselines["text classifier"] > 0.95  # where the choice is named in the question
    assert fam["order_leak"].baselines["answer-text prior"] < 0.65  # no single text is right more often
    for leak in ("position_leak", "text_leak", "name_leak", "order_leak"):
        assert fam[leak].judged and not fam[leak].passes and fam[leak].p_above_chance < 1e-6
    assert fam["fair"].passes and fam["fair"].chance == 0.25
    assert all(abs(fam["fair"].baselines[b] - 0.25) < 0.1 for b in BASELINES)
    assert report.failing == [fam[f] for f in ("name_leak", "order_leak", "position_leak", "text_leak")]
    warning = report.warning()
    assert all(f in warning for f in ("name_leak", "order_leak", "text_leak", "position_leak"))
    assert "fair" not in warning


def test_cross_validation_within_one_split_catches_the_same_leaks():
    report = audit(_split(2))
    assert "cross-validation" in report.fitted_on
    assert [f.family for f in report.failing] == ["name_leak", "order_leak", "position_leak", "text_leak"]
    assert report.as_dict()["families"]["fair"]["passes"]


def test_small_families_are_reported_not_judged():
    report = audit(_split(1, per_family=10), _split(0, per_family=10))
    assert report.passes and not any(f.judged for f in report.families)
    assert "not judged" in report.markdown()


def _write(path, items):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_eaqa(path, items, check_audio=False)


def test_cli_audits_train_and_test_splits_and_exits_1_on_a_leak(tmp_path, capsys):
    _write(tmp_path / "leaky" / "train" / "synthetic.jsonl", _split(0))
    _write(tmp_path / "leaky" / "test" / "synthetic.jsonl", _split(1))
    assert main(["data", "audit", str(tmp_path / "leaky"), "--json", str(tmp_path / "audit.json")]) == 1
    out, err = capsys.readouterr()
    assert "| text_leak | 120 | 25.0 |" in out and "**LEAK**" in out and "train split (600 items)" in out
    assert "text_leak" in err and "fair:" not in err
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["passes"] is False and saved["failing"] == ["name_leak", "order_leak", "position_leak", "text_leak"]
    fair = [it for it in _split(1) if it.task == "fair"]
    _write(tmp_path / "fair.jsonl", fair)  # a file, cross-validated within itself
    assert main(["data", "audit", str(tmp_path / "fair.jsonl")]) == 0
    assert "5-fold cross-validation" in capsys.readouterr().out


@pytest.mark.parametrize("layout, message", [
    ({}, "no such file or directory"),
    ({"val": True}, "no test split"),
    ({"test": True}, "no train split"),
    ({"empty": True}, "holds no dataset"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, layout, message):
    root = tmp_path / "data"
    for split in layout:
        (root / split).mkdir(parents=True)
        if split != "empty":
            _write(root / split / "synthetic.jsonl", _split(0, per_family=2))
    if layout.get("empty"):
        (root / "empty").rmdir()
    assert main(["data", "audit", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_train_flag_names_a_missing_split(tmp_path, capsys):
    _write(tmp_path / "test" / "synthetic.jsonl", _split(0, per_family=2))
    assert main(["data", "audit", str(tmp_path / "test"), "--train", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope: no such file or directory" in err and len(err.splitlines()) == 1


def _leaky_family(rng: np.random.Generator, d: tasks.Difficulty) -> tasks.Task:
    """A family whose answer is always "maybe": any text prior guesses it."""
    wave = np.zeros(tasks.S.n_samples(2.0), dtype=np.float32)
    tasks.S.place(wave, tasks.S.beep(0.2), 0.5)
    choices = [str(w) for w in rng.permutation(["yes", "no", "never"])] + ["maybe"]
    return tasks.Task(wave, "Which word?", choices, "maybe", [(0.5, 0.7)], "It is <seg>0.50, 0.70</seg> maybe.")


def test_synth_writes_the_audit_into_the_manifest_and_warns_on_a_leak(tmp_path, monkeypatch, capsys):
    path = write_synthetic(SynthConfig(n=8, seed=0, families=NON_SPEECH[:2]), tmp_path / "fine")
    manifest = json.loads((tmp_path / "fine" / "manifest.json").read_text())
    assert manifest["audit"]["passes"] and "cross-validation" in manifest["audit"]["fitted_on"]
    assert set(manifest["audit"]["families"]) == set(NON_SPEECH[:2]) and path.endswith("synthetic.jsonl")

    monkeypatch.setitem(tasks.FAMILIES, "leaky", (_leaky_family, False))
    monkeypatch.setitem(synthetic.ALL_FAMILIES, "leaky", (_leaky_family, False))
    with pytest.warns(LeakWarning, match="leaky: answer-text prior 100.0% vs chance 25.0%"):
        write_synthetic(SynthConfig(n=40, seed=0, families=("leaky",)), tmp_path / "leaky")
    assert json.loads((tmp_path / "leaky" / "manifest.json").read_text())["audit"]["failing"] == ["leaky"]
    assert main(["data", "synth", "--n", "40", "--families", "leaky", "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "echo data synth: warning:" in err and "leaky" in err
