"""``echo convert whisper-ct2 | gguf | demo``: the converters as subcommands."""

from __future__ import annotations

import argparse
import time


def _whisper_ct2(args: argparse.Namespace) -> int:
    from .writers import convert_whisper_ct2

    t = time.perf_counter()
    out = convert_whisper_ct2(args.model_bin, args.out, force=args.overwrite)
    print(f"wrote Whisper's encoder as a Qwen2AudioEncoder to {out} ({time.perf_counter() - t:.1f} s)")
    return 0


def _gguf(args: argparse.Namespace) -> int:
    from .writers import convert_gguf

    t = time.perf_counter()
    out = convert_gguf(args.gguf, args.out, force=args.overwrite)
    print(f"wrote the decoder as a Qwen2ForCausalLM to {out} ({time.perf_counter() - t:.1f} s)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    t = time.perf_counter()
    out = demo.build(args.out, parts=args.parts, force=args.overwrite, bare=args.bare, time_marks_s=args.time_marks)
    untrained = args.bare or (args.parts is None and demo.default_parts() is None)
    print(f"assembled echo-demo in {out} ({time.perf_counter() - t:.1f} s)"
          + ("; untrained parts are random: the projector has not been aligned yet" if untrained else ""))
    return 0


def register(sub) -> None:
    """Register ``convert`` with its converters on ``sub``."""
    c = sub.add_parser("convert", help="convert foreign model files to Hugging Face directories echo loads")
    cs = c.add_subparsers(dest="convert_command", required=True)
    p = cs.add_parser("whisper-ct2", help="CTranslate2 Whisper model.bin -> its encoder as a Qwen2AudioEncoder dir")
    p.add_argument("model_bin", help="model.bin (or its directory)")
    p.add_argument("out", help="directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_whisper_ct2)
    p = cs.add_parser("gguf", help="Llama-layout GGUF decoder -> a Qwen2ForCausalLM dir (dequantised, float32)")
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out", help="directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_gguf)
    p = cs.add_parser("demo", help="assemble echo-demo (Whisper tiny.en encoder + projector + SmolLM2-135M) from "
                                   "the packages of the demo extra")
    p.add_argument("out", nargs="?", default=None, help="directory to create (default: the echo-demo cache that "
                                                         "--model echo-demo uses)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--parts", help="directory of trained parts (*.safetensors named as in the checkpoint; "
                                       "default: the parts echo ships)")
    which.add_argument("--bare", action="store_true",
                       help="no trained parts: the untrained assembly training starts from")
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory (a stale or altered cache)")
    p.add_argument("--time-marks", type=float, default=None, metavar="SECONDS",
                   help="write the audio's time into every audio run every SECONDS (0: none; default: as the parts "
                        "were trained)")
    p.set_defaults(func=_demo)
