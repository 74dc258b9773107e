"""Server settings: limits on what one request may carry and how many may wait, validated like every echo config."""

from __future__ import annotations

import dataclasses
import os

from ..errors import ConfigError


@dataclasses.dataclass(slots=True)
class ServeConfig:
    """What ``echo serve`` accepts.

    Attributes:
        model_name: the id /v1/models lists and responses carry.
        api_key: when set, /v1/* needs ``Authorization: Bearer <api_key>``.
        allowed_local_media_path: directory ``file://`` audio URLs may point into (None: no file URLs at all).
        max_audio_seconds: longer clips are refused (checked from the header, before decoding).
        max_audio_bytes: larger encoded audio is refused (checked on the base64 text, before decoding it).
        max_request_bytes: larger request bodies are refused while reading them (HTTP 413).
        max_audios_per_request: audio parts per request (the engine re-listens to one clip per request).
        max_pending: requests admitted or waiting in the server; more get 429 with Retry-After.
        max_n: largest ``n`` (samples per request).
        default_max_tokens: completion length when the request gives none.
        retry_after_s: the Retry-After a 429/503 carries.
        shutdown_grace_s: on shutdown, running requests get this long to finish before they are aborted.
    """

    model_name: str = "echo"
    api_key: str | None = None
    allowed_local_media_path: str | None = None
    max_audio_seconds: float = 600.0
    max_audio_bytes: int = 64 << 20
    max_request_bytes: int = 96 << 20
    max_audios_per_request: int = 1
    max_pending: int = 256
    max_n: int = 16
    default_max_tokens: int = 1024
    retry_after_s: int = 1
    shutdown_grace_s: float = 5.0

    def __post_init__(self):
        for name in ("max_audio_seconds", "max_audio_bytes", "max_request_bytes", "max_audios_per_request",
                     "max_pending", "max_n", "default_max_tokens", "retry_after_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ServeConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"ServeConfig.shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("ServeConfig.api_key must be non-empty when given")
        if self.allowed_local_media_path is not None:
            if not os.path.isdir(self.allowed_local_media_path):
                raise ConfigError(f"ServeConfig.allowed_local_media_path: {self.allowed_local_media_path} "
                                  "is not a directory")
            self.allowed_local_media_path = os.path.realpath(self.allowed_local_media_path)
