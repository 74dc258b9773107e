"""The ``echo serve`` subcommand: load a checkpoint, build one engine, serve it with uvicorn."""

from __future__ import annotations

import argparse

from ..engine_flags import add_engine_flags, add_model_flags, add_sampling_flags, engine_config, model_dtype


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` on ``sub``."""
    p = sub.add_parser("serve", help="OpenAI-compatible server: audio chat completions with in-engine re-listening")
    p.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    p.add_argument("--served-model-name", default=None, help="model id clients send (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--allowed-local-media-path", default=None,
                   help="directory file:// audio URLs may read from (default: none allowed)")
    p.add_argument("--max-audio-seconds", type=float, default=600.0)
    p.add_argument("--max-audio-mb", type=float, default=64.0, help="largest encoded audio per request")
    p.add_argument("--max-pending", type=int, default=256, help="requests in flight before 429")
    add_model_flags(p)
    add_sampling_flags(p, ("max_new_tokens",), max_new_tokens_help="completion length when a request gives no "
                                                                    "max_tokens")
    add_engine_flags(p, relisten_help="re-listen turns per answer (requests may lower it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from ..engine.llm import Engine
    from ..models import load
    from .app import build_app
    from .config import ServeConfig

    model = load(args.model, device=args.device, dtype=model_dtype(args))
    engine = Engine(model, engine_config(args))
    audio_bytes = int(args.max_audio_mb * (1 << 20))
    config = ServeConfig(model_name=args.served_model_name or os.path.basename(os.path.normpath(args.model)),
                         api_key=args.api_key, allowed_local_media_path=args.allowed_local_media_path,
                         max_audio_seconds=args.max_audio_seconds, max_audio_bytes=audio_bytes,
                         max_request_bytes=audio_bytes * 4 // 3 + (1 << 20), max_pending=args.max_pending,
                         default_max_tokens=args.max_new_tokens)
    uvicorn.run(build_app(engine, config), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=int(config.shutdown_grace_s) + 1)
    return 0
