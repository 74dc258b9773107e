"""Prompt ids: echo's chat template + ``<|AUDIO|>`` expansion equal the transformers processors' ids."""

from __future__ import annotations

import importlib.util

import pytest

import echo
from echo.errors import ConfigError
from tiny_checkpoints import sine_clip

CONVERSATIONS = {
    "one-audio": ([0.7], [{"role": "user", "content": [
        {"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "What is the sound?"}]}]),
    "two-audios-system": ([1.3, 4.7], [
        {"role": "system", "content": "You are a careful listener."},
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "audio", "audio": "a.wav"},
                                     {"type": "text", "text": " and "}, {"type": "audio", "audio": "b.wav"}]}]),
    "long33s-multiturn": ([33.0, 2.0], [
        {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Count beeps."}]},
        {"role": "assistant", "content": "<think>At <seg>3.0, 5.5</seg> I hear two.</think><answer>B</answer>"},
        {"role": "user", "content": [{"type": "audio", "audio": "b.wav"}, {"type": "text", "text": "And here?"}]}]),
}


def _frames(processor, clips):
    """Valid mel frames per clip as the processor's extractor counts them (ceil(samples / 160), capped)."""
    out = processor.feature_extractor(clips, sampling_rate=16000, return_attention_mask=True, padding="max_length")
    return [int(m.sum()) for m in out["attention_mask"]]


def assert_ids_match(model, processor, case):
    """echo's chat template and prompt ids equal the transformers processor's for one conversation."""
    seconds, conv = CONVERSATIONS[case]
    clips = [sine_clip(s, i) for i, s in enumerate(seconds)]
    text = processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert model.processor.apply_chat_template(conv) == text
    ref = processor(text=text, audio=clips, return_tensors="pt")["input_ids"][0].tolist()
    ours = model.processor(conv, _frames(processor, clips))
    assert ours == ref
    assert ours.count(model.config.audio_token_id) == sum(
        echo.models.num_audio_tokens(n) for n in _frames(processor, clips))


@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_ids_equal_qwen2_audio_processor(case, checkpoint):
    from transformers import AutoTokenizer, Qwen2AudioProcessor, WhisperFeatureExtractor

    path, _ = checkpoint("qwen2audio-tiny-gqa2")
    processor = Qwen2AudioProcessor(WhisperFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                    chat_template=(path / "chat_template.jinja").read_text())
    assert_ids_match(echo.load(path), processor, case)


def _torchvision_reason() -> str | None:
    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed"
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # PyPI torchvision does not import beside the CPU torch 2.13 wheel
        return f"torchvision does not import here ({type(e).__name__}: {e})"
    return None


@pytest.mark.skipif(_torchvision_reason() is not None,
                    reason=f"Qwen2_5OmniProcessor needs torchvision (e.g. torch==2.14.1 + torchvision==0.29.1): "
                           f"{_torchvision_reason()}")
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_ids_equal_qwen2_5_omni_processor(case, checkpoint):
    from transformers import (AutoTokenizer, Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                              WhisperFeatureExtractor)

    path, _ = checkpoint("omni-tiny-gqa2")
    processor = Qwen2_5OmniProcessor(Qwen2VLImageProcessor(), Qwen2VLVideoProcessor(),
                                     WhisperFeatureExtractor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
                                     chat_template=(path / "chat_template.jinja").read_text())
    assert_ids_match(echo.load(path), processor, case)


def test_encode_expands_each_audio_and_checks_counts(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    proc = echo.load(path).processor
    ids = proc.encode("A<|audio_bos|><|AUDIO|><|audio_eos|>B<|AUDIO|>", [200, 70])
    assert ids.count(proc.audio_token_id) == 50 + 17
    first = ids.index(proc.audio_token_id)
    assert ids[first - 1] == proc.audio_bos_token_id and ids[first + 50] == proc.audio_eos_token_id
    with pytest.raises(ValueError, match="2 <\\|AUDIO\\|> placeholders in the prompt but 1 audios"):
        proc.encode("<|AUDIO|><|AUDIO|>", [100])
    assert proc.splice_ids(3) == [proc.audio_bos_token_id] + [proc.audio_token_id] * 3 + [proc.audio_eos_token_id]
    assert proc.decode(proc.encode("I hear <seg>3.0, 5.5</seg>")) == "I hear <seg>3.0, 5.5</seg>"
    assert proc.eos_token_ids and all(isinstance(i, int) for i in proc.eos_token_ids)


def test_missing_chat_template_is_a_clear_error(checkpoint):
    path, _ = checkpoint("omni-tiny-gqa2")
    proc = echo.load(path).processor
    proc.chat_template, proc._template = None, None
    with pytest.raises(ConfigError, match="no chat template"):
        proc.apply_chat_template([{"role": "user", "content": "hi"}])
