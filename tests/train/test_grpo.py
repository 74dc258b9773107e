"""GRPO on echo's engine: hand-computed advantages and losses, trainer <-> engine log-prob parity on trajectories
with several re-listens, a few steps on a task with an obvious right answer raise the mean reward, a killed run
resumes to the same weights, and the verl parquet layout reads."""

from __future__ import annotations

import json
import math

import pytest
import tiny_checkpoints as tc
import torch
from helpers import ScriptedTurn, assert_close, kill_on_call

import echo
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine
from echo.errors import ConfigError
from echo.models.tiny import special_ids
from echo.train import grpo as grpo_mod
from echo.train.grpo import GRPOConfig, train_grpo
from echo.train.grpo_loss import PolicyLossConfig, group_advantages, k3_kl, policy_loss
from echo.train.rewards import RewardFn, accuracy_reward
from echo.train.rl_data import read_rl_records
from echo.train.rollout import old_logprobs, response_logprobs, rollout

SP = special_ids()
AUDIO_IDS = {SP["<|AUDIO|>"], SP["<|audio_bos|>"], SP["<|audio_eos|>"]}
BANNED = list(range(340, 350))  # chat-control and audio specials


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tc.train_workdir(tmp_path_factory, "grpo")
    tc.write_rl_task(d, [f"How many beeps, {i}?" for i in range(4)], seed=40)
    return d


def _script(tok, choose_letter: bool = True) -> ScriptedTurn:
    """think, re-listen twice (the second span overlapping the first), then answer with a free letter A-D."""
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    first = enc("<think><seg>0.5, 1.5</seg>")
    second = enc(" and <seg>1.0, 2.0</seg>")
    answer = enc("</think><answer>")
    plan = {0: first, len(first) + 3: second}
    at = len(first) + 3 + len(second) + 2
    plan[at] = answer
    choose = {}
    if choose_letter:
        choose = {at + len(answer): [enc(c)[0] for c in "ABCD"]}
        plan[at + len(answer) + 1] = enc("</answer>") + [SP["<|im_end|>"]]
    return ScriptedTurn(plan, SP["<|im_start|>"], len(enc("assistant\n")), AUDIO_IDS, BANNED, choose)


# ---- the arithmetic -----------------------------------------------------------------------------------------------

def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt(4 * 0.25 / 3)  # unbiased
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / torch.tensor([std] * 4 + [1e-6] * 4 + [0] * 0)
    expected[4:] = 0.0
    assert_close("std-normalised", expected, group_advantages(r, 4), atol=1e-5)
    assert_close("mean only", torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]), group_advantages(r, 4, False))
    assert_close("groups of one", torch.zeros(3), group_advantages(torch.tensor([1.0, 0.0, 5.0]), 1))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.ones(6), 4)


def test_policy_loss_clips_dual_clips_and_masks():
    cfg = PolicyLossConfig(clip_ratio=0.2, dual_clip=3.0, kl_coef=0.0)
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [5.0], [1.1]]))
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    mask = torch.ones(4, 1)
    loss, m = policy_loss(logp, old, adv, mask, cfg)
    # ratio 1.5, A>0: min(1.5, 1.2) -> -1.2 ; ratio 0.5, A>0: -0.5 ; ratio 5, A<0: max(5, 1.2)=5 capped at 3 ;
    # ratio 1.1, A=-2: 2.2
    per_token = torch.tensor([-1.2, -0.5, 3.0, 2.2])
    assert_close("token-mean", per_token.mean(), loss, atol=1e-6)
    assert m["clip_frac"] == pytest.approx(0.75)
    masked = torch.tensor([[1.0], [0.0], [1.0], [0.0]])  # inserted audio / padding carry no loss and no count
    loss, m = policy_loss(logp, old, adv, masked, cfg)
    assert_close("masked", (per_token[0] + per_token[2]) / 2, loss, atol=1e-6)
    assert m["tokens"] == 2
    # sequence-mean-token-mean: each sequence's own token mean, then the mean over sequences
    logp2, old2, mask2 = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    adv2 = torch.tensor([1.0, -1.0])
    seq_cfg = PolicyLossConfig(kl_coef=0.0, loss_agg="seq-mean-token-mean")
    assert_close("seq-mean", torch.tensor(0.0), policy_loss(logp2, old2, adv2, mask2, seq_cfg)[0], atol=1e-7)
    assert_close("token-mean", torch.tensor((3 * -1.0 + 1.0) / 4), policy_loss(logp2, old2, adv2, mask2)[0],
                 atol=1e-7)
    # global denominators: two micro-batches with the whole batch's token count sum to the one-batch loss
    whole = policy_loss(logp, old, adv, mask, cfg)[0]
    parts = sum(policy_loss(logp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], cfg, num_tokens=4)[0]
                for i in (0, 2))
    assert_close("micro-batched", whole, parts, atol=1e-6)


def test_k3_kl_matches_its_formula_and_the_true_kl_in_expectation():
    logp, ref = torch.log(torch.tensor([0.2, 0.5])), torch.log(torch.tensor([0.4, 0.5]))
    assert_close("k3", torch.tensor([2.0 - math.log(2.0) - 1, 0.0]), k3_kl(logp, ref), atol=1e-6)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.5, 0.3, 0.2])
    expectation = (p * k3_kl(p.log(), q.log())).sum()  # E_p[k3] = KL(p || q)
    assert_close("E[k3] = KL", (p * (p / q).log()).sum(), expectation, atol=1e-6)


def test_kl_term_is_added_with_its_coefficient():
    logp, ref = torch.log(torch.tensor([[0.2, 0.5]])), torch.log(torch.tensor([[0.4, 0.5]]))
    base = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), PolicyLossConfig(kl_coef=0.0))[0]
    with_kl, m = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), PolicyLossConfig(kl_coef=0.5),
                             ref)
    assert_close("kl added", base + 0.5 * k3_kl(logp, ref).mean(), with_kl, atol=1e-6)
    assert m["kl"] == pytest.approx(float(k3_kl(logp, ref).mean()))


# ---- engine <-> trainer --------------------------------------------------------------------------------------------

def test_trainer_logprobs_equal_engine_logprobs_on_interleaved_trajectories(workdir):
    model = echo.load(workdir / "base")
    records, skipped = read_rl_records(workdir / "rl.jsonl")
    assert len(records) == 4 and not skipped
    engine = Engine(model, EngineConfig(num_blocks=256, block_size=16), logits_processors=[_script(
        model.processor.tokenizer, choose_letter=False)])
    rolls = rollout(engine, records[:2], 3, SamplingParams(temperature=1.0, max_new_tokens=60), seeds=[11, 12])
    assert len(rolls) == 6
    for r in rolls:
        inserted = [x for x in r.relistens if x.inserted]
        assert len(inserted) == 2, r.text  # two real re-listens, spans from the text
        assert [x.decision.applied_samples for x in inserted] == [(8000, 24000), (16000, 32000)]
        # mask: 0 exactly on the spliced <|audio_bos|> AUDIO×n <|audio_eos|>, 1 on everything sampled
        spliced = [t for t, m in zip(r.token_ids, r.mask) if not m]
        assert len(spliced) == sum(x.num_audio_tokens + 2 for x in inserted)
        assert set(spliced) <= AUDIO_IDS
        assert len(r.logprobs) == sum(r.mask)
    waves = {}
    with torch.no_grad():
        logp, mask = response_logprobs(model, rolls, engine.features, waves)
    old = old_logprobs(rolls, tuple(mask.shape), mask.device)
    assert int(mask.sum()) == sum(len(r.logprobs) for r in rolls)
    assert_close("trainer vs engine log-probs", old, logp, atol=1e-4)
    assert float(logp[mask.bool()].min()) < -1.0  # free tokens were really sampled, not all forced


def test_a_few_grpo_steps_raise_the_mean_reward(workdir):
    cfg = GRPOConfig(group_size=8, prompts_per_step=2, steps=6, lr=1e-2, max_new_tokens=60, progress=False,
                     loss=PolicyLossConfig(kl_coef=0.04), engine=EngineConfig(num_blocks=512, block_size=16),
                     val_data=str(workdir / "rl.jsonl"), val_every=3)
    tok = echo.load(workdir / "base").processor.tokenizer
    result = train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "learn"), cfg,
                        RewardFn([("accuracy", accuracy_reward, 1.0)]), [_script(tok)])
    rewards = [h["reward"] for h in result["history"]]
    # chance is 1 in 4: the first step's 16 samples score at most 7/16 (P(X >= 8) = 0.03 at chance), the last high
    assert rewards[0] <= 7 / 16 and sum(rewards[-2:]) / 2 >= 0.85, rewards
    h = result["history"][0]
    assert h["relistens_per_trajectory"] == 2.0 and h["encoder_cache_hit_rate"] > 0.5  # 8 samples, same spans
    assert h["kl"] == pytest.approx(0.0, abs=1e-6) and result["history"][-1]["kl"] > 0
    val = [h.get("val/accuracy") for h in result["history"]]
    assert val[0] is None and val[2] is not None and val[5] is not None  # greedy validation every 3 steps
    assert val[5] == 1.0, val  # greedy picks the reinforced letter on all 4 held-out prompts
    lines = (workdir / "learn" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert (workdir / "learn" / "final" / "model.safetensors").is_file()
    echo.load(workdir / "learn" / "final")


def test_killed_run_resumes_to_the_same_weights(workdir, monkeypatch):
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, steps=4, lr=1e-3, max_new_tokens=60, save_every=1,
                     progress=False, engine=EngineConfig(num_blocks=256, block_size=16))
    tok = echo.load(workdir / "base").processor.tokenizer
    reward = RewardFn([("accuracy", accuracy_reward, 1.0)])
    train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "straight"), cfg, reward,
               [_script(tok)])
    # ref + policy forward per step: the 6th call is step 3's policy forward
    restore = kill_on_call(monkeypatch, grpo_mod, "response_logprobs", 6)
    with pytest.raises(KeyboardInterrupt):
        train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "resumed"), cfg, reward,
                   [_script(tok)])
    restore()
    result = train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "resumed"), cfg, reward,
                        [_script(tok)])
    assert [h["step"] for h in result["history"]] == [3, 4]
    a, b = echo.load(workdir / "straight" / "final"), echo.load(workdir / "resumed" / "final")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert_close(f"resumed {name}", p, q, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), echo.load(workdir / "base").parameters()))


# ---- data ----------------------------------------------------------------------------------------------------------

def test_verl_parquet_rows_read_and_bad_rows_are_reported(workdir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    prompt = "<audio>How many beeps? Choose the answer from ['one', 'two', 'three']. Think step-by-step."
    rows = [
        {"prompt": [{"role": "user", "content": prompt}], "audios": ["clip0.wav"], "data_source": "synth",
         "reward_model": {"style": "rule", "ground_truth": "B"},
         "extra_info": {"id": "a", "split": "train", "spans": [[0.5, 1.25]]}},
        {"prompt": [{"role": "user", "content": prompt}], "audios": ["missing.wav"], "data_source": "synth",
         "reward_model": {"style": "rule", "ground_truth": "two"}, "extra_info": {"id": "b", "split": "train"}},
        {"prompt": [{"role": "user", "content": "no placeholder"}], "audios": ["clip1.wav"], "data_source": "synth",
         "reward_model": {"style": "rule", "ground_truth": "two"}, "extra_info": {"id": "c", "split": "train"}},
    ]
    pq.write_table(pa.Table.from_pylist(rows), workdir / "rl.parquet")
    records, skipped = read_rl_records(workdir / "rl.parquet")
    assert [r.id for r in records] == ["a"]
    assert records[0].choices == ["one", "two", "three"] and records[0].answer == "two"  # letter -> choice
    assert records[0].user.startswith("How many beeps?") and records[0].data_source == "synth"
    assert records[0].spans == [(0.5, 1.25)]  # the span IoU reward's ground truth, from extra_info
    assert dict(skipped).keys() == {"b", "c"}
    assert "missing.wav" in dict(skipped)["b"] and "<audio>" in dict(skipped)["c"]


def test_cli_runs_grpo_and_rejects_bad_reward_specs(workdir, capsys):
    from echo.cli import main

    args = ["train", "grpo", "--model", str(workdir / "base"), "--data", str(workdir / "rl.jsonl"), "--out",
            str(workdir / "cli"), "--group-size", "2", "--prompts-per-step", "2", "--steps", "1",
            "--max-new-tokens", "8", "--kv-cache-gb", "0.01", "--reward", "accuracy=1", "--reward", "format=0.5"]
    assert main(args) == 0
    assert "trained 1 steps on 4 prompts" in capsys.readouterr().out
    row = json.loads((workdir / "cli" / "log.jsonl").read_text())
    assert set(row) >= {"reward/accuracy", "reward/format", "kl", "clip_frac", "time/rollout", "time/update"}
    assert main(args[:-2] + ["--reward", "accuracy"]) == 2  # one line naming the term, no traceback
    assert "--reward: reward term 'accuracy': expected NAME=WEIGHT" in capsys.readouterr().err
    assert main(args[:-2] + ["--reward", "echo.train.rewards:nope=1"]) == 2
    assert "no function nope" in capsys.readouterr().err


def test_confidence_term_reads_the_first_sampled_token_after_answer(workdir):
    from echo.engine.relisten import RelistenDecision
    from echo.engine.sequence import RelistenRecord
    from echo.train.rewards import confidence_accuracy_reward
    from echo.train.rl_data import RLRecord
    from echo.train.rollout import Rollout

    proc = echo.load(workdir / "base").processor
    enc = lambda s: proc.tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    head, letter, tail = enc("<think><seg>0.5, 1.5</seg>ok</think><answer>"), enc("B"), enc("</answer>")
    splice = [SP["<|audio_bos|>"]] + [SP["<|AUDIO|>"]] * 3 + [SP["<|audio_eos|>"]]
    cut = len(enc("<think><seg>0.5, 1.5</seg>"))
    ids = head[:cut] + splice + head[cut:] + letter + tail
    mask = [1] * cut + [0] * len(splice) + [1] * (len(ids) - cut - len(splice))
    logprobs = [-0.01 * i for i in range(sum(mask))]
    record = RLRecord("q", "x.wav", "Q?", ["one", "two"], "two")
    text = proc.decode(ids, skip_special_tokens=True)
    r = Rollout(record, 0, [], ids, mask, logprobs, [RelistenRecord(0, RelistenDecision("relisten", "ok"))], text,
                "stop", 40_000)
    t = r.trajectory(proc.decode)
    assert t.answer_token_logprob == logprobs[len(head)]  # "B": every head token was sampled, the splice was not
    assert confidence_accuracy_reward(t) == pytest.approx(math.exp(t.answer_token_logprob))
    assert r.spans == [(0, 40_000)]  # the record was never marked inserted: no span to re-encode


def test_bf16_update_runs_under_autocast_over_fp32_weights(workdir, monkeypatch):
    real, seen = grpo_mod.response_logprobs, []

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(grpo_mod, "response_logprobs", recording)
    cfg = GRPOConfig(group_size=4, prompts_per_step=2, steps=2, lr=1e-3, max_new_tokens=60, progress=False,
                     dtype="bf16", engine=EngineConfig(num_blocks=256, block_size=16))
    tok = echo.load(workdir / "base").processor.tokenizer
    result = train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "bf16"), cfg,
                        RewardFn([("accuracy", accuracy_reward, 1.0)]), [_script(tok)])
    assert seen == [(True, torch.bfloat16)] * 4  # the reference's and the policy's forward, each step
    first = result["history"][0]
    # the engine sampled in float32: the bf16 policy's ratio to it is 1 within bf16's rounding (measured 0.99995)
    assert first["ratio_mean"] == pytest.approx(1.0, abs=0.05) and first["clip_frac"] < 0.1
    assert echo.load(workdir / "bf16" / "final").dtype == torch.float32  # master weights stay float32
    with pytest.raises(ConfigError, match="dtype must be auto, fp32 or bf16"):
        train_grpo(str(workdir / "base"), str(workdir / "rl.jsonl"), str(workdir / "fp16"), GRPOConfig(dtype="fp16"))
    assert not (workdir / "fp16").exists()  # refused before anything is written
