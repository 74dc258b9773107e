"""Audio Flamingo 3 against transformers on tiny random weights: prompt ids and 30 s windows as
``AudioFlamingo3Processor`` makes them, audio embeddings and fp32 logits within 1e-4, 16 greedy tokens through
echo's engine, checkpoints read and written both ways, and the variants echo refuses."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import echo
from echo.audio.features import audio_windows, num_audio_tokens, num_mel_frames
from echo.config import EngineConfig, SamplingParams
from echo.engine.llm import Engine, Request
from echo.errors import CheckpointError
from echo.models.config import ModelConfig
from helpers import assert_close, save_perturbed
from tiny_checkpoints import sine_clip

# one window short and full, one sample past a window (a last window of no token), two and three windows
CASES = {"short0.7s": 0.7, "window7.3s": 7.3, "full30s": 30.0, "30s+1sample": 30 + 1 / 16000, "windows33s": 33.0,
         "windows61.3s": 61.3}
QUESTION = "What happens at <seg>1.0, 2.5</seg>?"


def _processor(path):
    from transformers import AudioFlamingo3Processor, AutoTokenizer, WhisperFeatureExtractor

    return AudioFlamingo3Processor(WhisperFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                   chat_template=(path / "chat_template.jinja").read_text(), audio_token="<sound>")


def _conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": question}]}]


def _echo_logits(model, ids: list[int], clip) -> tuple[torch.Tensor, torch.Tensor]:
    """echo's audio rows (its own log-mel and windows, the engine's path) and logits for one prompt."""
    with torch.no_grad():
        rows = model.embed_spans(model.feature_config, [torch.from_numpy(clip)], [(0, 0, len(clip))])[0]
        return rows, model(inputs_embeds=model.embed(torch.tensor([ids]), rows))


def _hf(hf, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' audio rows (projector output, each window's own tokens) and logits."""
    with torch.no_grad():
        audio = hf.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]).pooler_output
        logits = hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    input_features=inputs["input_features"], input_features_mask=inputs["input_features_mask"]).logits
    return audio, logits


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["af3-tiny-gqa2", "af3-tiny-gqa4"])
def test_ids_windows_audio_and_logits_match_transformers(name, case, checkpoint):
    path, hf = checkpoint(name)
    model = echo.load(path)
    proc = _processor(path)
    clip = sine_clip(CASES[case])
    conv = _conversation(QUESTION)
    text = proc.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert model.processor.apply_chat_template(conv) == text
    inputs = proc(text=text, audio=[clip])
    ids = model.processor(conv, [num_mel_frames(len(clip), model.feature_config)])
    assert ids == inputs["input_ids"][0].tolist()
    assert inputs["input_features"].shape[0] == len(audio_windows(0, len(clip), model.feature_config))
    ref_audio, ref_logits = _hf(hf, inputs)
    audio, logits = _echo_logits(model, ids, clip)
    assert audio.shape[0] == ids.count(model.config.audio_token_id)
    assert_close(f"{name}/{case} audio embeddings", ref_audio, audio)
    assert_close(f"{name}/{case} logits", ref_logits, logits)


def test_padded_batch_of_windowed_and_short_audio(checkpoint):
    """Two prompts (0.7 s, 33 s) left-padded by the processor into one batch: three windows in one encoder call."""
    path, hf = checkpoint("af3-tiny-gqa2")
    model = echo.load(path)
    proc = _processor(path)
    clips = [sine_clip(0.7, seed=1), sine_clip(33.0, seed=2)]
    convs = [_conversation("Count the beeps."), _conversation("What is said at <seg>0.2, 0.9</seg>?")]
    texts = [proc.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    inputs = proc(text=texts, audio=clips)
    ref_audio, ref_logits = _hf(hf, inputs)
    fc = model.feature_config
    rows = model.embed_spans(fc, [torch.from_numpy(c) for c in clips], [(0, 0, len(clips[0])),
                                                                             (1, 0, len(clips[1]))])
    with torch.no_grad():
        logits = model(inputs_embeds=model.embed(inputs["input_ids"], torch.cat(rows)),
                       attention_mask=inputs["attention_mask"])
    assert_close("batch audio", ref_audio, torch.cat(rows))
    for row, conv in enumerate(convs):  # padded positions carry no meaning in either model
        n = len(model.processor(conv, [num_mel_frames(len(clips[row]), fc)]))
        assert_close(f"batch row {row} logits", ref_logits[row, -n:], logits[row, -n:])


def test_sixteen_greedy_tokens_through_the_engine_equal_transformers(checkpoint):
    """echo's engine (paged KV cache, its own log-mel and windows) and transformers' generate on the same
    two-window prompt give the same 16 greedy tokens (the audio placeholder is never sampled, as in the engine)."""
    path, hf = checkpoint("af3-tiny-gqa4")
    model = echo.load(path)
    proc = _processor(path)
    clip = sine_clip(31.5, seed=4)
    question = "Describe it."
    inputs = proc(text=proc.apply_chat_template(_conversation(question), tokenize=False, add_generation_prompt=True),
                  audio=[clip])
    n_prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():  # the tiny checkpoint's generation config names no EOS: 16 tokens always
        ids = hf.generate(**inputs, do_sample=False, max_new_tokens=16, suppress_tokens=[model.config.audio_token_id])
    engine = Engine(model, EngineConfig(num_blocks=200, block_size=16, max_num_batched_tokens=256))
    [result] = engine.generate([Request(clip, question, SamplingParams(temperature=0, max_new_tokens=16,
                                                                       ignore_eos=True))])
    assert result.prompt_token_ids == ids[0, :n_prompt].tolist()
    assert result.samples[0].token_ids == ids[0, n_prompt:].tolist()
    assert len(result.samples[0].token_ids) == 16


@pytest.mark.parametrize("seconds, start_s", [(29.99, 0.0), (30.0, 0.0), (45.0, 0.0), (61.3, 3.0), (605.0, 0.0)])
def test_span_rows_follow_the_token_bookkeeping(seconds, start_s, checkpoint):
    """A span (prompt audio or re-listen) gives exactly num_audio_tokens(num_mel_frames(len)) rows, however many
    windows it has (605 s: 20 windows, the rest dropped, 15000 tokens); inside a longer clip it gives the rows of
    the same samples cut out as their own clip."""
    path, _ = checkpoint("af3-tiny-gqa2")
    model = echo.load(path)
    fc = model.feature_config
    lead = int(start_s * 16000)
    clip = torch.from_numpy(sine_clip(seconds + start_s, seed=5))
    n = len(clip) - lead
    [rows] = model.embed_spans(fc, [clip], [(0, lead, len(clip))])
    assert rows.shape[0] == num_audio_tokens(num_mel_frames(n, fc))
    if seconds > 600:
        assert rows.shape[0] == 20 * 750
    if lead:
        [alone] = model.embed_spans(fc, [clip[lead:].clone()], [(0, 0, n)])
        assert_close("span in its clip vs cut out", alone, rows, atol=0.0)


def test_checkpoint_written_by_echo_is_read_by_transformers(checkpoint, tmp_path):
    """Weights changed in echo, saved by the trainers' writer under the source's names: transformers reads them
    and computes echo's logits."""
    from transformers import AudioFlamingo3ForConditionalGeneration

    path, _ = checkpoint("af3-tiny-gqa2")
    model = echo.load(path)
    save_perturbed(model, path, tmp_path / "out")
    hf = AudioFlamingo3ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    proc = _processor(path)
    clip = sine_clip(2.0, seed=6)
    inputs = proc(text=proc.apply_chat_template(_conversation(QUESTION), tokenize=False, add_generation_prompt=True),
                  audio=[clip])
    ref_audio, ref_logits = _hf(hf, inputs)
    audio, logits = _echo_logits(model, inputs["input_ids"][0].tolist(), clip)
    assert_close("saved projector output", ref_audio, audio)
    assert_close("saved logits", ref_logits, logits)
    assert echo.load(tmp_path / "out").config == model.config


def test_from_transformers_shares_weights_and_reads_the_processor(checkpoint):
    path, hf = checkpoint("af3-tiny-gqa2")
    model = echo.from_transformers(hf, _processor(path))
    assert model.projector.linear_2.weight is hf.model.multi_modal_projector.linear_2.weight
    assert model.processor.audio_token_id == model.config.audio_token_id == hf.config.audio_token_id
    assert model.processor.audio_bos_token_id is None and model.feature_config.max_windows == 20
    assert model.processor.splice_ids(3) == [model.config.audio_token_id] * 3  # no tokens around the run


def test_config_round_trip_and_released_names():
    cfg = ModelConfig.from_hf(echo.models.presets.preset("af3-tiny-gqa2").to_hf_dict())
    assert cfg.family == "audioflamingo3" and cfg.audio_bos_token_id is None
    # the released config.json spells the encoder's sizes as AudioFlamingo3EncoderConfig does
    released = cfg.to_hf_dict()
    assert released["audio_config"]["hidden_size"] == cfg.audio.d_model
    assert ModelConfig.from_hf({"architectures": ["AudioFlamingo3ForConditionalGeneration"],
                                "audio_config": {}, "text_config": {}}).audio.num_layers == 32


def _copy_with(path, tmp_path, name, config=None, tensors=None):
    bad = shutil.copytree(path, tmp_path / name)
    if config is not None:
        raw = json.loads((bad / "config.json").read_text())
        config(raw)
        (bad / "config.json").write_text(json.dumps(raw))
    if tensors is not None:
        t = load_file(bad / "model.safetensors")
        tensors(t)
        save_file(t, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


@pytest.mark.parametrize("name, config, tensors, message", [
    ("quantized", lambda d: d.update(quantization_config={"quant_method": "awq", "bits": 4}), None,
     r"quantized \(awq\); echo reads unquantized"),
    ("no-projector", None, lambda t: [t.pop(k) for k in list(t) if k.startswith("multi_modal_projector.linear_2")],
     r"missing tensors for echo parameters: projector\.linear_2\.bias, projector\.linear_2\.weight"),
    ("projector-without-bias", lambda d: d.update(projector_bias=False), None, r"projector_bias=False"),
])
def test_unsupported_variants_are_one_line_errors_naming_the_checkpoint(name, config, tensors, message, checkpoint,
                                                                        tmp_path):
    path, _ = checkpoint("af3-tiny-gqa2")
    bad = _copy_with(path, tmp_path, name, config, tensors)
    with pytest.raises(CheckpointError, match=message) as err:
        echo.load(bad)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
