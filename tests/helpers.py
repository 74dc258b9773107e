"""Shared test helpers: one assert_close for every numeric comparison (prints the error budget it used), the scripted
logits processors that make a tiny random model re-listen on cue, and the task families that need no espeak-ng."""

from __future__ import annotations

import numpy as np
import torch

from echo.data.tasks import FAMILIES as _TASK_FAMILIES

# the synthetic task families that need no espeak-ng, read from the families' own metadata
NON_SPEECH = tuple(name for name, (_, needs_espeak) in _TASK_FAMILIES.items() if not needs_espeak)


def synthetic_benchmark(out, n: int, seed: int, families: tuple[str, ...] = NON_SPEECH, **config):
    """``echo data synth``'s items (``SynthConfig(n, seed, families, **config)``) written to ``out`` and loaded as
    ``echo eval --benchmark synthetic`` reads them."""
    from echo.data.synthetic import SynthConfig, write_synthetic
    from echo.eval.datasets import load_benchmark

    write_synthetic(SynthConfig(n=n, seed=seed, families=families, **config), out)
    return load_benchmark("synthetic", out)


def eval_runs(model_dir, tmp_path) -> dict:
    """``echo eval`` on two synthetic items with the checkpoint ``model_dir``: its summary.json (a smoke test)."""
    import json

    from echo.cli import main

    synthetic_benchmark(tmp_path / "data", n=2, seed=3, families=("pitch_at",), difficulties=("easy",))
    assert main(["eval", "--benchmark", "synthetic", "--data", str(tmp_path / "data"), "--model", str(model_dir),
                 "--out", str(tmp_path / "out"), "--max-new-tokens", "4", "--no-progress"]) == 0
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def sft_cli_read_back(workdir, capsys, hf_class) -> set[str]:
    """``echo train sft`` (fp32, one epoch of the two records ``tiny_checkpoints.write_sft_task`` wrote) on
    ``workdir/base``; transformers' ``hf_class`` reads ``run/final`` back with echo's logits (within 1e-4). Returns
    the names of the tensors the run changed."""
    import echo
    from echo.cli import main
    from safetensors.torch import load_file

    assert main(["train", "sft", "--model", str(workdir / "base"), "--data", str(workdir / "data.jsonl"),
                 "--out", str(workdir / "run"), "--epochs", "1", "--grad-accum", "1", "--dtype", "fp32"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    final = workdir / "run" / "final"
    before, after = load_file(workdir / "base" / "model.safetensors"), load_file(final / "model.safetensors")
    model = echo.load(final)
    hf = hf_class.from_pretrained(final).eval()
    ids = torch.tensor([model.processor("Hello there")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=0)
    return {n for n in after if not torch.equal(before[n], after[n])}


def kill_on_call(monkeypatch, module, name: str, n: int):
    """Make the ``n``-th call of ``module.name`` raise KeyboardInterrupt (a kill mid-run); returns the function
    that puts the real one back."""
    real, calls = getattr(module, name), {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    return lambda: monkeypatch.setattr(module, name, real)


def tree(d) -> dict[str, bytes]:
    """Every file under ``d`` by relative path (the whole observable result of a command)."""
    from pathlib import Path

    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def assert_close(name: str, ref, out, atol: float = 1e-4, rtol: float = 0.0) -> None:
    """Fail unless ``out`` matches ``ref`` elementwise within ``atol + rtol*|ref|``; NaNs and shape mismatches fail.

    The message carries max-abs and RMS-relative error, so a failing run says how far off it was (the error
    budgets: docs/practices.md §3).
    """
    ref_t = torch.as_tensor(np.asarray(ref) if not isinstance(ref, torch.Tensor) else ref).detach().double().cpu()
    out_t = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).detach().double().cpu()
    assert ref_t.shape == out_t.shape, f"{name}: shape {tuple(out_t.shape)} != reference {tuple(ref_t.shape)}"
    assert not torch.isnan(out_t).any(), f"{name}: output has {int(torch.isnan(out_t).sum())} NaNs"
    assert not torch.isnan(ref_t).any(), f"{name}: reference has NaNs"
    if ref_t.numel() == 0:
        return
    diff = (ref_t - out_t).abs()
    bound = atol + rtol * ref_t.abs()
    max_abs = diff.max().item()
    rms_rel = (diff.pow(2).mean().sqrt() / ref_t.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    bad = int((diff > bound).sum())
    assert bad == 0, (
        f"{name}: {bad}/{diff.numel()} elements outside atol={atol:g} rtol={rtol:g}; "
        f"max abs {max_abs:.3e} at {np.unravel_index(int(diff.argmax()), tuple(diff.shape))}, rms rel {rms_rel:.3e}"
    )


class ScriptedSeg:
    """A logits processor that scripts what a tiny random model "says", so tests can make it re-listen on cue.

    ``plans`` maps a prompt (its token ids) to ``{step: token ids}``: from the step-th sampled token of the
    answer, those ids are forced one per step. Steps count sampled tokens only (spliced audio tokens, the
    ``audio_ids``, are never sampled and are skipped). Between scripted stretches the ``banned`` ids are masked
    (so a random model does not wander into chat-control tokens) and the rest is the model's own choice.
    """

    def __init__(self, plans: dict[tuple[int, ...], dict[int, list[int]]], audio_ids: set[int], banned: list[int]):
        self.plans, self.audio_ids, self.banned = plans, audio_ids, banned

    def __call__(self, history: list[int], logits):
        import torch

        for prompt, plan in self.plans.items():
            if tuple(history[: len(prompt)]) == prompt:
                step = sum(1 for t in history[len(prompt):] if t not in self.audio_ids)
                for start, ids in plan.items():
                    if start <= step < start + len(ids):
                        forced = torch.full_like(logits, float("-inf"))
                        forced[ids[step - start]] = 0.0
                        return forced
                out = logits.clone()
                out[self.banned] = float("-inf")
                return out
        raise AssertionError(f"no plan for a history starting {history[:8]}")


class ScriptedTurn:
    """A logits processor for any prompt: counts the answer's sampled tokens (everything after the last
    ``<|im_start|>`` and its ``header_len`` role tokens, minus the never-sampled ``skip_ids``), then at answer
    step k forces ``plan[k]``'s ids one per step, restricts the choice to ``choose[k]`` when given, and otherwise
    bans ``banned`` ids (so a random model does not wander into chat-control or audio tokens)."""

    def __init__(self, plan: dict[int, list[int]], im_start: int, header_len: int, skip_ids: set[int],
                 banned: list[int], choose: dict[int, list[int]] | None = None):
        self.plan, self.im_start, self.header_len = plan, im_start, header_len
        self.skip_ids, self.banned, self.choose = skip_ids, banned, choose or {}

    def __call__(self, history: list[int], logits):
        import torch

        start = len(history) - history[::-1].index(self.im_start) + self.header_len
        step = sum(1 for t in history[start:] if t not in self.skip_ids)
        for first, ids in self.plan.items():
            if first <= step < first + len(ids):
                forced = torch.full_like(logits, float("-inf"))
                forced[ids[step - first]] = 0.0
                return forced
        if step in self.choose:
            allowed = torch.full_like(logits, float("-inf"))
            allowed[self.choose[step]] = logits[self.choose[step]]
            return allowed
        out = logits.clone()
        out[self.banned] = float("-inf")
        return out


def engine_greedy_with_logits(model, clips, steps: int, text_vocab: int = 300):
    """Greedy engine decode of one audio question per clip, text ids only (ids >= ``text_vocab``, the tiny
    tokenizer's specials, are banned); returns each sequence's tokens and the float32 logits rows it chose from."""
    from echo import Engine, EngineConfig, Request, SamplingParams

    seen: dict[tuple, list[torch.Tensor]] = {}
    prompts: list[tuple] = []

    def record(history, logits):
        for p in prompts:
            if tuple(history[: len(p)]) == p:
                seen.setdefault(p, []).append(logits.float().cpu().clone())
        banned = torch.arange(text_vocab, logits.shape[-1], device=logits.device)
        return logits.index_fill(0, banned, float("-inf"))

    conv = [{"role": "user", "content": [{"type": "audio", "audio": "a"}, {"type": "text", "text": "Q?"}]}]
    reqs = []
    for clip in clips:
        prompt = model.processor(conv, [int(-(-len(clip) // 160))])
        prompts.append(tuple(prompt))
        reqs.append(Request(clip, prompt, SamplingParams(temperature=0, max_new_tokens=steps, ignore_eos=True)))
    engine = Engine(model, EngineConfig(kv_cache_bytes=1 << 24), logits_processors=[record])
    out = engine.generate(reqs)
    return [r.samples[0].token_ids for r in out], [torch.stack(seen[p]) for p in prompts]


class AnswerOracle:
    """A stand-in for an echo model in eval tests: answers every item right (from ``answers``: id -> answer) in
    Echo's output format, citing a segment, and records the request ids and sampling params it was called with."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.requests, self.params = dict(answers), [], []

    @classmethod
    def for_synthetic(cls, data_dir) -> "AnswerOracle":
        """From the answers of a synthetic dataset's ``synthetic.jsonl``."""
        import json
        from pathlib import Path

        lines = (Path(data_dir) / "synthetic.jsonl").read_text().splitlines()
        return cls({rec["id"]: rec["answer"] for rec in map(json.loads, lines)})

    @classmethod
    def for_benchmark(cls, bench) -> "AnswerOracle":
        return cls({item.id: item.answer for item in bench.items})

    def generate(self, requests, sampling_params=None):
        from types import SimpleNamespace

        self.requests += [r.id for r in requests]
        self.params.append(sampling_params)
        return [SimpleNamespace(text=f"<think>listen <seg>0.10, 1.00</seg></think><answer>{self.answers[r.id]}</answer>")
                for r in requests]


def save_perturbed(model, source, out, seed: int = 3) -> None:
    """Change every weight of ``model`` a little (seeded), then write it with the trainers' checkpoint writer under
    ``source``'s tensor names: a read-back that equals the source file cannot pass for one of the changed model."""
    from echo.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(model, source, out)
