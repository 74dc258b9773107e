"""``echo serve``: an OpenAI-compatible chat-completions server with audio input and in-engine re-listening.

Read in the order app (routes) -> protocol (request checks) -> audio_input (audio limits and decoding) -> loop
(the engine thread) -> metrics. ``build_app(engine, config)`` is the entry point for tests and embedding; it is
imported on first use so the rest of the CLI runs without the server's dependencies.
"""

from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from .app import build_app

        return build_app
    raise AttributeError(f"module 'echo.serve' has no attribute {name!r}")
