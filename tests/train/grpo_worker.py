"""Run by test_distributed.py, alone or under torchrun: a GRPO run on the tiny task with a scripted answer letter
(a full fine-tune, or LoRA of the rank given after the steps); rank 0 writes the first step's full gradients (before
the optimizer step) next to the run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for helpers

from safetensors.torch import save_file  # noqa: E402

import echo  # noqa: E402
from echo.config import EngineConfig  # noqa: E402
from echo.models.tiny import special_ids  # noqa: E402
from echo.train.grpo import GRPOConfig, GRPOTrainer  # noqa: E402
from echo.train.rewards import RewardFn, accuracy_reward  # noqa: E402
from helpers import ScriptedTurn  # noqa: E402


def script(tok) -> ScriptedTurn:
    sp = special_ids()
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    first, answer = enc("<think><seg>0.5, 1.5</seg>"), enc("</think><answer>")
    at = len(first) + 3 + len(answer)
    plan = {0: first, len(first) + 3: answer, at + 1: enc("</answer>") + [sp["<|im_end|>"]]}
    return ScriptedTurn(plan, sp["<|im_start|>"], len(enc("assistant\n")),
                        {sp["<|AUDIO|>"], sp["<|audio_bos|>"], sp["<|audio_eos|>"]}, list(range(340, 350)),
                        {at: [enc(c)[0] for c in "ABCD"]})


def main(base: str, data: str, out: str, steps: int, lora: int = 0) -> None:
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, steps=steps, lr=1e-3, max_new_tokens=40, micro_batch=3,
                     progress=False, engine=EngineConfig(num_blocks=256, block_size=16), lora_rank=lora)
    trainer = GRPOTrainer(base, out, cfg, RewardFn([("accuracy", accuracy_reward, 1.0)]),
                          [script(echo.load(base).processor.tokenizer)])
    real_step, dumped = trainer.opt.step, []

    def step(*args, **kwargs):
        if not dumped:
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).contiguous()
                     for n, p in trainer.model.named_parameters() if p.grad is not None}
            if trainer.rank == 0:
                save_file(grads, os.path.join(out, "step1_grads.safetensors"))
            dumped.append(True)
        return real_step(*args, **kwargs)

    Path(out).mkdir(parents=True, exist_ok=True)
    trainer.opt.step = step
    trainer.fit(data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *map(int, sys.argv[5:]))
