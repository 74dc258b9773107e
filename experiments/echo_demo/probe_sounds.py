"""Can the audio rows tell the sounds apart? A linear probe on what echo-demo's decoder is given.

The grounding runs (``grounding.py``) find *a* sound among others but pick the named one at chance. This asks whether
the information is there to be read: every mixed sound of a ``grounding.py`` run's clips becomes one vector, the mean
of the audio rows (encoder + projector output, what the decoder sees at the ``<|AUDIO|>`` tokens) over the sound's
span in its clip; a multinomial logistic regression fitted on the train clips' sounds names the test clips' sounds of
the classes it was fitted on (recordings never in training; ``naming_recorded`` leaves out echo's generated sounds,
the same signals in every split). Then the grounding question itself, answered by the probe: in each test clip, the
sound whose vector scores highest for the named class. Both beside chance.

    python experiments/echo_demo/probe_sounds.py --work runs/grounding/G [--model ~/.cache/echo/echo-demo]

A probe that names the sounds well where the LoRA-trained decoder does not says the rows carry what is needed and
the decoder has not learned to use it; a probe near chance says the encoder is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sound_vectors(model, clips: list[dict]) -> list[tuple[str, str, np.ndarray, bool]]:
    """``(clip id, label, vector, is the named sound)`` for every mixed sound of ``clips``."""
    from echo.audio import load

    features = model.module.resolve_feature_config()
    tokens_per_s = model.module.config.spec.audio_tokens_per_s
    out = []
    for c in clips:
        wave = torch.from_numpy(load(c["audio"]))
        rows = model.module.embed_spans(features, [wave], [(0, 0, wave.numel())])[0].float()
        for a, b, label in c["events"]:
            lo = min(int(a * tokens_per_s), rows.shape[0] - 1)
            hi = max(lo + 1, min(int(np.ceil(b * tokens_per_s)), rows.shape[0]))
            out.append((c["id"], label, rows[lo:hi].mean(0).numpy(), [a, b] == c["span"]))
    return out


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, weight_decay: float = 1e-3) -> torch.nn.Linear:
    """Multinomial logistic regression (L-BFGS, L2) on standardised vectors."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(xt), yt) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def main() -> int:
    import echo
    from grounding import clip_items  # this folder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="a grounding.py run directory (its data/)")
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "echo" / "echo-demo")
    ap.add_argument("--out", type=Path, help="report JSON (default: WORK/probe.json)")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = echo.load(args.model)
    train = sound_vectors(model, clip_items(args.work / "data" / "train" / "synthetic.jsonl"))
    test = sound_vectors(model, clip_items(args.work / "data" / "test" / "synthetic.jsonl"))
    labels = sorted({label for _, label, _, _ in train})
    index = {label: i for i, label in enumerate(labels)}
    x = np.stack([v for _, _, v, _ in train])
    mean, std = x.mean(0), x.std(0) + 1e-6
    with torch.enable_grad():
        probe = fit_probe((x - mean) / std, np.array([index[label] for _, label, _, _ in train]), len(labels))
    scores = probe(torch.from_numpy((np.stack([v for _, _, v, _ in test]) - mean) / std).float()).numpy()
    seen = [(s, t) for s, t in zip(scores, test) if t[1] in index]  # a class the probe was fitted on
    named_right = [labels[int(s.argmax())] == t[1] for s, t in seen]
    # echo's generated sounds are the same signals in every split; a recorded sound of a fitted class is another
    # recording of that class (the split is by recording)
    from echo.data.scenes import synthesised

    generated = {s.label for s in synthesised(np.random.default_rng(0))}
    recorded = [ok for ok, (_, t) in zip(named_right, seen) if t[1] not in generated]
    majority = Counter(label for _, label, _, _ in train).most_common(1)[0][0]
    # the grounding question: in each clip whose named sound is of a fitted class, the clip's sound (of any class)
    # scoring highest for that class
    picked, options = [], []
    for cid in sorted({t[0] for t in test}):
        rows = [(s, t) for s, t in zip(scores, test) if t[0] == cid]
        named = [t for _, t in rows if t[3]]
        if len(named) != 1 or named[0][1] not in index:
            continue
        cls = index[named[0][1]]
        picked.append(max(rows, key=lambda r: r[0][cls])[1][3])
        options.append(len(rows))
    report = {"model": str(args.model), "train_sounds": len(train), "classes": len(labels),
              "test_sounds": len(test), "test_sounds_of_fitted_classes": len(seen),
              "naming_accuracy": round(float(np.mean(named_right)), 4),
              "naming_recorded": {"sounds": len(recorded), "accuracy": round(float(np.mean(recorded)), 4)
                                  if recorded else None},
              "naming_majority_class": round(float(np.mean([t[1] == majority for _, t in seen])), 4),
              "naming_uniform_chance": round(1 / len(labels), 4),
              "which_is_named": {"clips": len(picked), "accuracy": round(float(np.mean(picked)), 4),
                                 "uniform_chance": round(float(np.mean([1 / n for n in options])), 4)}}
    out = args.out or args.work / "probe.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
