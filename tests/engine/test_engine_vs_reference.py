"""Greedy engine output == the reference re-listen loop built on transformers (re-prefill everything each turn,
the span's audio added as one more audio), with a scripted processor making a tiny random model re-listen."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

import echo
import tiny_checkpoints as tc
from echo.config import EngineConfig, RelistenPolicy, SamplingParams
from echo.engine.llm import Engine, Request
from echo.engine.relisten import decide, ends_with_seg
from helpers import ScriptedSeg

SR = 16_000
NAME = "omni-tiny-gqa2"


@pytest.fixture(scope="module")
def omni(checkpoint):
    path, hf = checkpoint(NAME)
    return path, hf, echo.load(path)


def _conversation(question):
    return [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"}, {"type": "text", "text": question}]}]


def _ids(proc, text):
    return proc.tokenizer.encode(text, add_special_tokens=False).ids


def _processor(model, prompts_and_plans):
    proc = model.processor
    cfg = model.config
    audio_ids = {cfg.audio_token_id, cfg.audio_bos_token_id, cfg.audio_eos_token_id}
    banned = [proc.tokenizer.token_to_id(t) for t in tc.SPECIALS]
    return ScriptedSeg({tuple(p): plan for p, plan in prompts_and_plans}, audio_ids, banned)


def _plan(proc, segs: list[tuple[int, str]], end_step: int) -> dict[int, list[int]]:
    """Free tokens, then each '<seg>a, b</seg>' at its step, then <|im_end|> at end_step."""
    plan = {step: _ids(proc, text) for step, text in segs}
    plan[end_step] = [proc.tokenizer.token_to_id("<|im_end|>")]
    starts = sorted(plan)
    for a, b in zip(starts, starts[1:]):
        assert a + len(plan[a]) < b, f"scripted stretches at {a} and {b} overlap"
    return plan


def reference_loop(hf, model, clip, question, processor, max_new=60, policy=RelistenPolicy()):
    family = model.config.family
    """The public reference's loop on transformers: generate (greedy, no cache) until '</seg>' or EOS; on
    '</seg>' cut the span out, featurise it as its own clip, append <|audio_bos|> AUDIO*n <|audio_eos|> and the
    span as one more audio, and re-prefill the whole extended prompt."""
    proc = model.processor
    feats, frames = tc.features_for(family, [clip])
    ids = proc(_conversation(question), frames.tolist())
    n_prompt = len(ids)
    turns = sampled = 0
    eos = set(proc.eos_token_ids)
    while sampled < max_new:
        ids_t = torch.tensor(ids)[None]
        logits, _ = tc.hf_forward(hf, ids_t, torch.ones_like(ids_t), feats, frames)
        token = int(torch.argmax(processor(ids, logits[0, -1])))
        ids.append(token)
        sampled += 1
        if token in eos:
            break
        text = proc.decode(ids[n_prompt:])
        if ends_with_seg(text):
            d = decide(text, turns, len(clip), policy)
            turns += 1
            if d.action == "relisten":
                s, e = d.applied_samples
                span_feats, span_frames = tc.features_for(family, [clip[s:e]])
                ids += proc.splice_ids(model.num_audio_tokens(int(span_frames[0])), s / SR)  # time marks
                feats, frames = torch.cat([feats, span_feats]), torch.cat([frames, span_frames])
    return ids[n_prompt:]


def _engine(model, processor, **cfg):
    return Engine(model, EngineConfig(num_blocks=cfg.pop("num_blocks", 200), block_size=16,
                                      max_num_batched_tokens=cfg.pop("max_num_batched_tokens", 48), **cfg),
                  logits_processors=[processor])


def scripted_run(model, hf, family, clip, question, segs, end_step, max_new=60, **engine_cfg):
    """One request scripted to cite ``segs`` (``_plan``), run by the reference loop and by echo's engine:
    ``(prompt ids, the reference's tokens, the engine's GenerationResult)``."""
    proc = model.processor
    _, frames = tc.features_for(family, [clip])
    prompt = proc(_conversation(question), frames.tolist())
    processor = _processor(model, [(prompt, _plan(proc, segs, end_step))])
    expected = reference_loop(hf, model, clip, question, processor, max_new=max_new)
    [result] = _engine(model, processor, **engine_cfg).generate(
        [Request(clip, question, SamplingParams(temperature=0, max_new_tokens=max_new))])
    return prompt, expected, result


def test_batch_of_one_matches_reference(omni):
    path, hf, model = omni
    prompt, expected, result = scripted_run(model, hf, "qwen2_5_omni", tc.sine_clip(4.0, seed=1), "How many beeps?",
                                            [(2, "<seg>1.0, 2.5</seg>"), (20, "<seg>3.0, 3.6</seg>")], 40)
    sample = result.samples[0]
    assert result.prompt_token_ids == prompt
    assert sample.token_ids == expected
    assert [r.decision.action for r in sample.relistens] == ["relisten", "relisten"]
    assert [r.decision.applied_samples for r in sample.relistens] == [(16_000, 40_000), (48_000, 57_600)]
    for r in sample.relistens:  # spliced tokens carry mask 0, everything else sampled carries 1
        start = r.position - len(prompt)
        assert sample.mask[start : start + r.num_audio_tokens + 2] == [0] * (r.num_audio_tokens + 2)
    assert sum(sample.mask) == len(sample.token_ids) - sum(r.num_audio_tokens + 2 for r in sample.relistens)
    assert sample.finish_reason == "stop"


def test_qwen2_audio_matches_reference(checkpoint):
    """The second architecture through the same engine: Qwen2-Audio (30 s max, its conv stem reads 2 padding
    frames past each span, which the engine's mel call supplies)."""
    path, hf = checkpoint("qwen2audio-tiny-gqa2")
    _, expected, result = scripted_run(echo.load(path), hf, "qwen2_audio", tc.sine_clip(3.5, seed=2), "What is it?",
                                       [(2, "<seg>0.5, 2.0</seg>")], 30)
    assert result.samples[0].token_ids == expected
    assert result.samples[0].relistens[0].decision.action == "relisten"


def test_batch_of_four_relistening_at_different_steps(omni):
    """Four requests decoding together; re-listens at different steps and spans, one too short (skipped), one
    malformed (skipped), one past the clip (clamped); each equals its own reference run."""
    path, hf, model = omni
    proc = model.processor
    cases = [
        (3.0, "Where is the tone?", [(1, "<seg>0.5, 1.5</seg>")], 25),
        (4.5, "Count the beeps.", [(4, "<seg>2.0, 2.1</seg>"), (22, "<seg>0.0, 4.5</seg>")], 40),  # 0.1 s: skipped
        (5.0, "What changes?", [(3, "<seg>4.0, 9.0</seg>"), (20, "<seg>a, b</seg>")], 36),       # clamped, malformed
        (3.5, "Which came first?", [(8, "<seg>0.2, 3.4</seg>"), (26, "<seg>1.0, 2.0</seg>")], 45),
    ]
    clips, prompts, plans = [], [], []
    for i, (seconds, question, segs, end) in enumerate(cases):
        clip = tc.sine_clip(seconds, seed=10 + i)
        _, frames = tc.features_for("qwen2_5_omni", [clip])
        prompts.append(proc(_conversation(question), frames.tolist()))
        plans.append(_plan(proc, segs, end))
        clips.append(clip)
    processor = _processor(model, list(zip(prompts, plans)))
    engine = _engine(model, processor)
    params = SamplingParams(temperature=0, max_new_tokens=60)
    results = engine.generate([Request(c, q, params) for c, (_, q, _, _) in zip(clips, cases)])
    for clip, (_, question, _, _), result in zip(clips, cases, results):
        assert result.samples[0].token_ids == reference_loop(hf, model, clip, question, processor), question
    actions = [[(r.decision.action, r.decision.reason) for r in res.samples[0].relistens] for res in results]
    assert actions[1] == [("skip", "too short"), ("relisten", "ok")]
    assert actions[2] == [("relisten", "clamped"), ("skip", "malformed")]
    assert engine.scheduler.num_preemptions == 0


def test_audio_path_input_and_encoder_cache_hits(omni, tmp_path):
    """Two requests over one file: the prompt audio is encoded once; the same re-listened span hits the cache."""
    _, _, model = omni
    proc = model.processor
    clip = tc.sine_clip(3.0, seed=3)
    sf.write(tmp_path / "clip.wav", clip, SR, subtype="FLOAT")
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    plan = _plan(proc, [(1, "<seg>1.0, 2.0</seg>")], 25)
    prompts = [(proc(_conversation(q), frames.tolist()), plan) for q in ("First?", "Second?")]
    engine = _engine(model, _processor(model, prompts))
    params = SamplingParams(temperature=0, max_new_tokens=40)
    results = engine.generate([Request(tmp_path / "clip.wav", "First?", params),
                               Request(tmp_path / "clip.wav", "Second?", params)])
    stats = engine.encoder_cache.stats
    assert stats.misses == 2 and stats.hits == 2  # prompt audio + span, each computed once
    assert [r.cache_hit for res in results for r in res.samples[0].relistens] == [False, True]


def test_engine_on_triton_kernels_matches_torch_path(omni, monkeypatch):
    """The whole engine with its Triton kernels (store_kv, paged decode attention; interpreted on the CPU) gives
    the same greedy tokens as with the PyTorch references."""
    path, hf, model = omni
    proc = model.processor
    clip = tc.sine_clip(2.0, seed=7)
    question = "Again?"
    _, frames = tc.features_for("qwen2_5_omni", [clip])
    prompt = proc(_conversation(question), frames.tolist())
    processor = _processor(model, [(prompt, _plan(proc, [(1, "<seg>0.5, 1.5</seg>")], 18))])
    params = SamplingParams(temperature=0, max_new_tokens=20)
    [torch_path] = _engine(model, processor).generate([Request(clip, question, params)])
    import echo.triton_kernels.paged_attention as tpa
    import echo.triton_kernels.store_kv as tkv

    calls = {"decode": 0, "store": 0}

    def counted(fn, key):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(tpa, "paged_decode", counted(tpa.paged_decode, "decode"))
    monkeypatch.setattr(tkv, "store_kv", counted(tkv.store_kv, "store"))
    monkeypatch.setenv("ECHO_BACKEND", "triton")
    [triton_path] = _engine(model, processor).generate([Request(clip, question, params)])
    assert calls["decode"] > 0 and calls["store"] > 0  # the kernels really ran
    assert triton_path.samples[0].token_ids == torch_path.samples[0].token_ids
    assert triton_path.samples[0].relistens[0].decision.action == "relisten"


def test_decode_graphs_replay_gives_the_eager_tokens(omni, monkeypatch):
    """Decode steps through engine/cuda_graphs.py's static buffers, buckets and padding (a stand-in capture that
    replays eagerly: CUDA graphs themselves need a GPU, benchmarks/gpu/run.sh) give the eager engine's tokens,
    with three requests re-listening at different steps: batches of 3, 2 and 1 pad into buckets 4, 2 and 1,
    prefills and splices run eagerly between replays, and a padding row never writes the cache."""
    from echo.engine.cuda_graphs import DecodeGraphs, capture_eagerly

    _, _, model = omni
    proc = model.processor
    cases = [(3.0, "Where is the tone?", [(1, "<seg>0.5, 1.5</seg>")], 20),
             (4.5, "Count the beeps.", [(2, "<seg>2.0, 3.0</seg>"), (20, "<seg>0.0, 4.5</seg>")], 38),
             (2.5, "What changes?", [(1, "<seg>1.0, 2.0</seg>")], 18)]
    clips, prompts = [], []
    for i, (seconds, question, segs, end) in enumerate(cases):
        clips.append(tc.sine_clip(seconds, seed=20 + i))
        _, frames = tc.features_for("qwen2_5_omni", [clips[-1]])
        prompts.append((proc(_conversation(question), frames.tolist()), _plan(proc, segs, end)))
    processor = _processor(model, prompts)
    params = SamplingParams(temperature=0, max_new_tokens=45)
    requests = [Request(c, q, params) for c, (_, q, _, _) in zip(clips, cases)]
    eager = _engine(model, processor, max_num_seqs=4).generate(requests)
    monkeypatch.setenv("ECHO_BACKEND", "triton")  # the graphs' attention and store_kv (interpreted on the CPU)
    engine = _engine(model, processor, max_num_seqs=4)
    assert engine.runner.graphs is None  # never on the CPU
    graphs = engine.runner.graphs = DecodeGraphs(model, engine.kv, 4, engine.config.max_model_len, capture_eagerly)
    sizes = []
    run = graphs.run
    graphs.run = lambda chunks: sizes.append(len(chunks)) or run(chunks)
    replayed = engine.generate(requests)
    assert [r.samples[0].token_ids for r in replayed] == [r.samples[0].token_ids for r in eager]
    assert sorted(graphs.graphs) == [1, 2, 4] and graphs.replays == len(sizes)
    assert {3, 2, 1} <= set(sizes)  # padded buckets were replayed
    assert sum(r.decision.action == "relisten" for res in replayed for r in res.samples[0].relistens) == 4


def test_audioflamingo3_matches_reference(checkpoint):
    """Audio Flamingo 3 through the same engine: a 31 s clip (two 30 s windows) and two re-listens, the second a
    31 s span heard as two windows; its splices are bare <sound> runs (no tokens around them)."""
    path, hf = checkpoint("af3-tiny-gqa2")
    model = echo.load(path)
    proc = model.processor
    prompt, expected, result = scripted_run(model, hf, "audioflamingo3", tc.sine_clip(31.0, seed=3), "What is it?",
                                            [(2, "<seg>1.0, 2.5</seg>"), (20, "<seg>0.0, 31.0</seg>")], 38,
                                            max_num_batched_tokens=256)
    sample = result.samples[0]
    assert result.prompt_token_ids == prompt and sample.token_ids == expected
    assert [r.decision.applied_samples for r in sample.relistens] == [(16_000, 40_000), (0, 496_000)]
    assert [r.num_audio_tokens for r in sample.relistens] == [37, 775]  # 1.5 s; 30 s + 1 s windows
    assert sum(sample.mask) == len(sample.token_ids) - 37 - 775  # the splices are the audio tokens alone
