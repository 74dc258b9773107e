"""Qwen3-Omni's thinker against transformers on tiny random weights: audio token counts, audio embeddings and fp32
logits within 1e-4, 16 greedy tokens through echo's engine, span bookkeeping, checkpoints read and written both
ways (the thinker alone or inside a full Qwen3-Omni), and the variants echo refuses."""

from __future__ import annotations

import pytest
import torch

import echo
import tiny_checkpoints as tc
from echo.audio.features import num_mel_frames
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine, Request
from echo.errors import CheckpointError
from echo.models.config import ModelConfig
from helpers import assert_close

FAMILY = "qwen3_omni_moe"
PRESETS = ["qwen3omni-tiny-gqa2", "qwen3omni-tiny-gqa4"]
# seconds of each audio in one prompt: exactly one 1 s chunk, chunks and 2 s attention windows with a tail,
# past the 30 s Whisper window, two audios, a sub-chunk audio beside a longer one
CASES = {"chunk1.0s": (1.0,), "chunks7.3s": (7.3,), "long33s": (33.0,), "two-audios": (1.3, 4.7),
         "short-beside-long": (0.7, 3.0)}
QUESTION = "What happens at <seg>1.0, 2.5</seg>?"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", PRESETS)
def test_logits_and_audio_match_transformers(name, case, checkpoint, features):
    path, hf = checkpoint(name)
    model = echo.load(path)
    seconds = CASES[case]
    feats, num_frames = features(FAMILY, seconds)
    ids = torch.tensor([model.processor(tc.conversation(len(seconds), QUESTION), num_frames.tolist())])
    mask = torch.ones_like(ids)
    ref_logits, ref_audio = tc.hf_forward(hf, ids, mask, feats, num_frames)
    with torch.no_grad():
        audio = model.encode_audio(feats, num_frames)
        logits = model(ids, attention_mask=mask, input_features=feats, num_frames=num_frames)
    assert audio.shape[0] == sum(model.num_audio_tokens(int(n)) for n in num_frames)
    assert_close(f"{name}/{case} audio embeddings", ref_audio, audio)
    assert_close(f"{name}/{case} logits", ref_logits, logits)


def test_audio_token_counts_are_transformers(checkpoint):
    """Frames -> tokens for this encoder's 1 s chunks, at and around chunk edges, as transformers counts them; the
    prompt expands its audio placeholder to that many tokens."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    path, hf = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.load(path)
    frames = [1, 2, 7, 8, 9, 99, 100, 101, 199, 200, 201, 730, 3000, 30000]
    expected = _get_feat_extract_output_lengths(torch.tensor(frames), hf.config.audio_config.n_window).tolist()
    assert [model.num_audio_tokens(n) for n in frames] == expected
    for n in (99, 101, 730):
        ids = model.processor(tc.conversation(1, "Hi."), [n])
        assert ids.count(model.config.audio_token_id) == model.num_audio_tokens(n)


def test_sub_chunk_audio_does_not_depend_on_its_batch(checkpoint, features):
    """A 0.7 s audio (under one chunk) encoded alone gives the rows transformers gives it beside a longer audio
    (every chunk padded to 1 s, as in any batch holding a chunk); transformers alone pads it to its own length."""
    path, hf = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.load(path)
    feats, frames = features(FAMILY, (0.7, 3.0))
    n = model.num_audio_tokens(int(frames[0]))
    mask = (torch.arange(feats.shape[-1]) < frames[:, None]).long()
    with torch.no_grad():
        batched = hf.model.get_audio_features(feats, mask).last_hidden_state[:n]
        alone_hf = hf.model.get_audio_features(feats[:1], mask[:1]).last_hidden_state
        alone = model.encode_audio(feats[:1], frames[:1])
        beside = model.encode_audio(feats, frames)[:n]
    assert_close("0.7 s alone vs beside 3 s (float rounding of other batch shapes only)", beside, alone, atol=1e-6)
    assert_close(f"0.7 s alone vs transformers beside 3 s (transformers alone differs by "
                 f"{float((alone_hf - batched).abs().max()):.2e})", batched, alone)


def test_sixteen_greedy_tokens_through_the_engine_equal_transformers(checkpoint):
    """echo's engine (paged KV cache, its own log-mel, the MoE decode path) and transformers re-run greedily on the
    same prompt give the same 16 tokens (the audio placeholder never sampled, as in the engine)."""
    path, hf = checkpoint("qwen3omni-tiny-gqa4")
    model = echo.load(path)
    clip = tc.sine_clip(2.6, seed=4)
    question = "Describe it."
    feats, frames = tc.features_for(FAMILY, [clip])
    prompt = model.processor(tc.conversation(1, question), frames.tolist())
    ids = torch.tensor([prompt])
    for _ in range(16):
        logits, _ = tc.hf_forward(hf, ids, torch.ones_like(ids), feats, frames)
        logits[0, -1, model.config.audio_token_id] = float("-inf")
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_num_batched_tokens=48))
    [result] = engine.generate([Request(clip, question, SamplingParams(temperature=0, max_new_tokens=16,
                                                                       ignore_eos=True))])
    assert result.prompt_token_ids == prompt
    assert result.samples[0].token_ids == ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("start_s, end_s", [(0.0, 1.0), (0.37, 1.5), (1.0, 3.0), (2.0, 2.03), (1.9, 4.0)],
                         ids=["first-chunk", "odd-span", "two-chunks", "under-one-hop-x2", "to-clip-end"])
def test_span_rows_follow_the_token_bookkeeping(start_s, end_s, checkpoint, features):
    """A re-listened span: as many rows as its splice has audio tokens, equal to transformers' rows for the span
    cut out as its own clip (beside the prompt's clip, as the re-submission loop runs it)."""
    path, hf = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.load(path)
    clip = tc.sine_clip(4.0, seed=5)
    s, e = int(start_s * 16000), int(end_s * 16000)
    [rows] = model.embed_spans(model.feature_config, [torch.from_numpy(clip)], [(0, s, e)])
    n = model.num_audio_tokens(num_mel_frames(e - s, model.feature_config))
    assert rows.shape[0] == n == model.processor.splice_ids(n).count(model.config.audio_token_id)
    feats, frames = tc.features_for(FAMILY, [clip, clip[s:e]])
    mask = (torch.arange(feats.shape[-1]) < frames[:, None]).long()
    with torch.no_grad():
        ref = hf.model.get_audio_features(feats, mask).last_hidden_state[-n:]
    assert_close(f"span {start_s}-{end_s} s rows", ref, rows)


def _hf_logits(hf, model, clip):
    feats, frames = tc.features_for(FAMILY, [clip])
    ids = torch.tensor([model.processor(tc.conversation(1, QUESTION), frames.tolist())])
    return tc.hf_forward(hf, ids, torch.ones_like(ids), feats, frames)[0], ids, feats, frames


def test_checkpoint_written_by_echo_is_read_by_transformers(checkpoint, tmp_path):
    """Weights changed in echo (experts included), saved by the trainers' writer under the source's names:
    transformers reads them and computes echo's logits."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    from echo.train.checkpoint import save_checkpoint

    path, _ = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.load(path)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_checkpoint(model, path, tmp_path / "out")
    hf = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ref, ids, feats, frames = _hf_logits(hf, model, tc.sine_clip(2.0, seed=6))
    with torch.no_grad():
        assert_close("saved logits", ref, model(ids, input_features=feats, num_frames=frames))
    assert echo.load(tmp_path / "out").config == model.config


def test_from_transformers_shares_expert_storage(checkpoint):
    """Wrapped without copying: each echo expert views the transformers model's fused expert tensors, so an update
    through transformers is what echo computes with."""
    path, hf = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.from_transformers(hf)
    experts = hf.model.language_model.layers[0].mlp.experts
    mine = model.decoder.layers[0].mlp
    inter = experts.down_proj.shape[-1]
    assert mine.experts[3].up_proj.weight.data_ptr() == experts.gate_up_proj[3, inter:].data_ptr()
    with torch.no_grad():  # under autograd the experts are stacked by torch.stack, so gradients reach them
        gate_up, down = mine.stacked_weights()
    assert gate_up.data_ptr() == experts.gate_up_proj.data_ptr() and down.data_ptr() == experts.down_proj.data_ptr()
    clip = tc.sine_clip(2.0, seed=6)
    loaded = echo.load(path)
    with torch.no_grad():
        experts.down_proj.mul_(1.5)
        ref, ids, feats, frames = _hf_logits(hf, loaded, clip)
        assert_close("wrapped logits after an in-place update", ref,
                     model(ids, input_features=feats, num_frames=frames))


def test_loaded_experts_are_packed_once_without_a_copy(checkpoint):
    path, _ = checkpoint("qwen3omni-tiny-gqa2")
    model = echo.load(path)
    block = model.decoder.layers[0].mlp
    before = block.experts[5].gate_proj.weight.clone()
    gate_up, down = block.stacked_weights()  # echo.load's parameters need no gradients
    assert block.experts[5].gate_proj.weight.data_ptr() == gate_up[5].data_ptr()  # a view of the stack now
    assert torch.equal(block.experts[5].gate_proj.weight, before)
    assert block.stacked_weights()[0] is gate_up


def _full_checkpoint(path, dst):
    """The thinker checkpoint inside a full Qwen3-Omni: thinker.* tensors, talker/code2wav tensors beside them,
    the thinker's config as thinker_config."""
    def tensors(t):
        t.update({f"thinker.{k}": t.pop(k) for k in list(t)})
        t.update({"talker.model.norm.weight": torch.ones(4), "code2wav.pre_transformer.norm.weight": torch.ones(4)})

    return tc.copy_checkpoint(path, dst, lambda thinker: {"architectures": ["Qwen3OmniMoeForConditionalGeneration"],
                                                          "model_type": "qwen3_omni_moe", "thinker_config": thinker,
                                                          "enable_audio_output": False}, tensors)


def test_full_qwen3_omni_checkpoint_reads_its_thinker(checkpoint, tmp_path):
    path, _ = checkpoint("qwen3omni-tiny-gqa2")
    full = echo.load(_full_checkpoint(path, tmp_path / "full"))
    thinker = echo.load(path)
    assert full.config == thinker.config
    for (name, a), (_, b) in zip(full.named_parameters(), thinker.named_parameters()):
        assert torch.equal(a, b), name


def test_config_round_trip():
    cfg = ModelConfig.from_hf(echo.models.presets.preset("qwen3omni-tiny-gqa4").to_hf_dict())
    assert cfg == echo.models.presets.preset("qwen3omni-tiny-gqa4")
    assert cfg.decoder.attention_bias and not cfg.decoder.norm_topk_prob and cfg.decoder.decoder_sparse_step == 2


def _fuse_experts(t):
    """Layer 0's experts as transformers holds them in memory (gate_up_proj, down_proj), not as it saves them."""
    prefix = "model.layers.0.mlp.experts."
    n = len([k for k in t if k.startswith(prefix) and k.endswith("down_proj.weight")])
    t[prefix + "gate_up_proj"] = torch.stack([torch.cat([t.pop(f"{prefix}{e}.gate_proj.weight"),
                                                         t.pop(f"{prefix}{e}.up_proj.weight")]) for e in range(n)])
    t[prefix + "down_proj"] = torch.stack([t.pop(f"{prefix}{e}.down_proj.weight") for e in range(n)])


@pytest.mark.parametrize("name, config, tensors, message", [
    ("talker-only", lambda d: {"architectures": ["Qwen3OmniMoeTalkerForConditionalGeneration"],
                               "model_type": "qwen3_omni_moe_talker"}, None,
     r"unsupported architecture \['Qwen3OmniMoeTalkerForConditionalGeneration'\]"),
    ("full-without-thinker", lambda d: {"architectures": ["Qwen3OmniMoeForConditionalGeneration"],
                                        "model_type": "qwen3_omni_moe"}, None, r"has no thinker"),
    ("fp8", lambda d: d.update(quantization_config={"quant_method": "fp8"}), None, r"quantized \(fp8\)"),
    ("fused-experts", None, _fuse_experts, r"unexpected tensors: .*model\.layers\.0\.mlp\.experts\.down_proj"),
    ("missing-expert", None, lambda t: t.pop("model.layers.2.mlp.experts.7.up_proj.weight"),
     r"missing tensors for echo parameters: decoder\.layers\.2\.mlp\.experts\.7\.up_proj\.weight"),
])
def test_unsupported_variants_are_one_line_errors_naming_the_checkpoint(name, config, tensors, message, checkpoint,
                                                                        tmp_path):
    path, _ = checkpoint("qwen3omni-tiny-gqa2")
    bad = tc.copy_checkpoint(path, tmp_path / name, config, tensors)
    with pytest.raises(CheckpointError, match=message) as err:
        echo.load(bad)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
