"""A GRPO prompt whose clip the encoder refuses (too short, or too long under long_audio="error") is a reported
skip, not the end of the run."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import tiny_checkpoints as tc

from echo.config import EngineConfig
from echo.train.grpo import GRPOConfig, train_grpo
from echo.train.grpo_loss import PolicyLossConfig


def test_refused_clips_are_skipped_by_id_and_reason(checkpoint, tmp_path):
    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    data = tc.write_rl_task(tmp_path, [f"How many beeps, {i}?" for i in range(4)], seed=7)
    sf.write(tmp_path / "clip1.wav", np.zeros(100, dtype=np.float32), 16000, subtype="FLOAT")  # under one token
    sf.write(tmp_path / "clip3.wav", np.zeros(31 * 16000, dtype=np.float32), 16000, subtype="FLOAT")  # over 30 s
    # 2 steps of 2 prompts cover the 4 rows: before the check, a refused clip was always in the batch
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, steps=2, lr=1e-3, max_new_tokens=4, progress=False,
                     loss=PolicyLossConfig(kl_coef=0.0),
                     engine=EngineConfig(num_blocks=64, block_size=16, long_audio="error"))
    result = train_grpo(str(path), str(data), str(tmp_path / "run"), cfg)
    skipped = dict(result["skipped"])
    assert result["steps"] == 2 and result["records"] == 2
    assert skipped.keys() == {"q1", "q3"}
    assert "too short" in skipped["q1"] and "above the feature extractor's maximum" in skipped["q3"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
