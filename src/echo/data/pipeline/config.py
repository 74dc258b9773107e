"""Pipeline configuration: one endpoint per model role, and the run as a whole. Validated on construction."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ...errors import ConfigError
from ...launch import dist_env

STAGES = ("caption", "synthesize", "filter", "export")


@dataclasses.dataclass(slots=True)
class EndpointConfig:
    """An OpenAI-compatible chat-completions endpoint and how hard to drive it.

    Attributes:
        base_url: e.g. ``http://host:8000/v1``.
        model: the model name the endpoint serves.
        api_key_env: environment variable holding the API key (a placeholder key is sent when it is unset, as
            local servers such as vLLM accept any).
        concurrency: requests in flight at once.
        rpm, tpm: requests / tokens per minute (None: unlimited); tokens are estimated before sending.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt on 429, 5xx, timeouts and dropped connections.
        backoff_s, backoff_max_s: exponential backoff base and cap (full jitter); a Retry-After header wins.
        max_tokens, temperature: generation parameters (part of the cache key).
        price_in, price_out: cost per million prompt / completion tokens, for the report.
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    max_tokens: int = 4096
    temperature: float = 0.0
    price_in: float = 0.0
    price_out: float = 0.0

    def __post_init__(self):
        if not self.base_url or not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ConfigError(f"endpoint {self.base_url}: a model name is required")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 (or unset), got {value}")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ConfigError(f"need timeout_s > 0 and 0 <= backoff_s <= backoff_max_s, got {self.timeout_s}, "
                              f"{self.backoff_s}, {self.backoff_max_s}")
        if self.max_retries < 0 or self.max_tokens < 1 or self.temperature < 0:
            raise ConfigError("max_retries must be >= 0, max_tokens >= 1 and temperature >= 0")
        if self.price_in < 0 or self.price_out < 0:
            raise ConfigError("prices must be >= 0")

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env) or "EMPTY"

    def params(self) -> dict:
        """The generation parameters that change an answer (they enter the cache key)."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}


@dataclasses.dataclass(slots=True)
class PipelineConfig:
    """One run over a folder of audio.

    Attributes:
        audio_dir: the clips (wav/flac/mp3/ogg, searched recursively); ids are paths relative to it, sans suffix.
        out_dir: everything the run writes: ``cache/``, one folder of chunks per stage, ``export/``, the report.
        meta: optional strong labels (JSONL or AudioSet-Strong TSV, see ``clips``).
        caption, llm, judge: endpoints (``judge`` defaults to ``llm``); ``caption_local`` is an echo checkpoint
            directory used instead of ``caption``.
        prompts_dir: a folder whose ``<name>.md`` / ``<name>.schema.json`` override the packaged prompts.
        questions_per_clip: how many items the synthesiser is asked for per clip.
        rule_questions: also add questions built from the strong labels (no LLM; they skip the judge).
        chunk_size: records per output chunk (each chunk is written atomically).
        rank, world_size: this process's shard of the clips (default: RANK / WORLD_SIZE from the environment).
        retry_failed: redo items a previous run recorded as ``request_failed``.
    """

    audio_dir: Path
    out_dir: Path
    meta: Path | None = None
    caption: EndpointConfig | None = None
    caption_local: Path | None = None
    llm: EndpointConfig | None = None
    judge: EndpointConfig | None = None
    prompts_dir: Path | None = None
    questions_per_clip: int = 2
    rule_questions: bool = False
    chunk_size: int = 64
    rank: int | None = None
    world_size: int | None = None
    progress: bool = True
    dry_run: bool = False
    retry_failed: bool = False
    local_batch: int = 16
    local_max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        self.audio_dir, self.out_dir = Path(self.audio_dir), Path(self.out_dir)
        self.meta = Path(self.meta) if self.meta else None
        self.caption_local = Path(self.caption_local) if self.caption_local else None
        self.prompts_dir = Path(self.prompts_dir) if self.prompts_dir else None
        if self.caption is not None and self.caption_local is not None:
            raise ConfigError("give either a caption endpoint or --caption-local, not both")
        if self.judge is None:
            self.judge = self.llm
        if self.questions_per_clip < 1 or self.chunk_size < 1 or self.local_batch < 1:
            raise ConfigError("questions_per_clip, chunk_size and local_batch must be >= 1")
        if self.prompts_dir is not None and not self.prompts_dir.is_dir():
            raise ConfigError(f"prompts directory {self.prompts_dir} not found")
        env_rank, env_world = dist_env()
        self.rank = env_rank if self.rank is None else self.rank
        self.world_size = env_world if self.world_size is None else self.world_size
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside [0, world_size={self.world_size})")

    def require(self, *roles: str) -> None:
        """Raise naming the missing endpoint when a stage needs one."""
        for role in roles:
            if role == "caption" and self.caption is None and self.caption_local is None:
                raise ConfigError("captioning needs --caption-endpoint/--caption-model or --caption-local DIR")
            if role in ("llm", "judge") and getattr(self, role) is None:
                raise ConfigError(f"this stage needs an LLM ({role}): --llm-endpoint and --llm-model")
