"""``AudioLanguageModel``: what every echo model offers the engine and the trainer.

Three separable steps, so the engine can run each where it wants:

1. ``encode_audio(features, num_frames)`` → audio embeddings ``(num_audio_tokens_total, hidden)`` (encoder +
   projector; a re-listened span is just a short audio here); ``embed_spans(features, waves, spans)`` runs it
   from waveforms, the one path from audio to rows for the engine and the trainers.
2. ``embed(input_ids, audio_embeds)`` → input embeddings with the audio rows placed, in order, at the
   ``<|AUDIO|>`` positions (a splice is ``<|audio_bos|> <|AUDIO|>×n <|audio_eos|>`` plus its n rows).
3. A decoder pass: ``forward`` (padded batch, causal mask, logits: training and parity tests) or
   ``forward_flat`` (flattened tokens of many sequences, each with its own positions, attention through an
   ``AttentionBackend`` that owns the KV cache) followed by ``compute_logits`` on the rows that need them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..audio.features import FeatureConfig, audio_windows, num_mel_frames
from ..ops.gather_rows import gather_rows
from ..ops.log_mel import log_mel_spans
from .attention import AttentionBackend, DenseCausalAttention
from .audio_encoder import num_audio_tokens
from .config import ModelConfig
from .decoder import Decoder
from .layers import Linear


class AudioLanguageModel(nn.Module):
    """Base of ``Qwen2_5OmniThinker`` and ``Qwen2Audio``; subclasses add the audio tower (``_encode``)."""

    decoder_class = Decoder  # a family with another layer stack (models/moe.py) names its own

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.decoder = self.decoder_class(cfg.decoder, device, dtype)
        self.lm_head = Linear(cfg.decoder.hidden_size, cfg.decoder.vocab_size, bias=False, device=device,
                                 dtype=dtype)
        self.processor = None  # PromptProcessor, attached by the loader when the checkpoint ships a tokenizer

    @property
    def processor(self):
        return self._processor

    @processor.setter
    def processor(self, processor) -> None:
        """Attach a ``PromptProcessor``; it lays audio runs out as this config says (its time marks)."""
        if processor is not None:
            processor.use_time_marks(self.config.time_marks_s, self.config.spec.audio_tokens_per_s)
        self._processor = processor

    # ---- audio --------------------------------------------------------------------------------------------------

    def encode_audio(self, features: torch.Tensor, num_frames: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Audio embeddings ready to place at ``<|AUDIO|>`` positions.

        features: log-mel, either packed ``(num_mel_bins, sum(num_frames))`` (valid frames of each audio back to
        back) or padded ``(num_audios, num_mel_bins, max_frames)`` as WhisperFeatureExtractor returns it.
        num_frames: valid mel frames of each audio (100 per second).
        Returns ``(sum(num_audio_tokens(L) for L in num_frames), hidden_size)`` in the model's dtype.
        """
        num_frames = [int(n) for n in (num_frames.tolist() if torch.is_tensor(num_frames) else num_frames)]
        mels = self.config.audio.num_mel_bins
        if any(n <= 0 for n in num_frames):
            raise ValueError(f"num_frames must all be > 0, got {num_frames}")
        if features.dim() == 3:
            if features.shape[0] != len(num_frames) or features.shape[1] != mels or \
                    features.shape[2] < max(num_frames):
                raise ValueError(f"padded features {tuple(features.shape)} do not fit num_frames={num_frames} "
                                 f"with {mels} mel bins")
        elif features.dim() != 2 or features.shape != (mels, sum(num_frames)):
            raise ValueError(f"packed features must be ({mels}, {sum(num_frames)}), got {tuple(features.shape)}")
        return self._encode(features, num_frames)

    def _encode(self, features: torch.Tensor, num_frames: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def resolve_feature_config(self, model_dir=None) -> FeatureConfig:
        """The one feature config of this checkpoint, used by the engine, SFT and GRPO alike: the one ``echo.load``
        read from its preprocessor_config.json (kept as ``feature_config``), else that file in ``model_dir``, else
        the family's defaults (Qwen2.5-Omni 300 s, Qwen2-Audio 30 s) with the encoder's own number of mel bins
        (Whisper tiny.en's tower takes 80, not Qwen's 128)."""
        kept = getattr(self, "feature_config", None)
        if isinstance(kept, FeatureConfig):
            return kept
        if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
            return self.config.spec.feature_config(model_dir)
        return dataclasses.replace(self.config.spec.feature_config(), n_mels=self.config.audio.num_mel_bins)

    def embed_spans(self, features: FeatureConfig, waves: Sequence[torch.Tensor],
                    spans: Sequence[tuple[int, int, int]], grad: bool = False) -> list[torch.Tensor]:
        """Embeddings of ``(wave_index, start_sample, end_sample)`` spans of 16 kHz waveforms, one
        ``(num_audio_tokens, hidden)`` tensor each: one log-mel call for all spans, one encoder + projector call.
        The one place audio becomes the rows placed at ``<|AUDIO|>`` tokens, shared by the engine (prompt audio and
        re-listens, behind its encoder cache) and the trainers (which recompute the same rows for the same spans),
        so training sees exactly the embeddings the engine decoded with. ``grad`` keeps the encoder in the
        autograd graph (training it); otherwise no_grad."""
        if not spans:
            return []
        # each span as the windows it is heard in (one, unless the family cuts long audio into windows)
        windows = [[(w, a, b) for a, b in audio_windows(s, e, features)] for w, s, e in spans]
        spans = [piece for pieces in windows for piece in pieces]
        used = sorted({w for w, _, _ in spans})
        offset, start = {}, 0
        for w in used:
            offset[w] = start
            start += int(waves[w].numel())
        wave = torch.cat([waves[w] for w in used]) if len(used) > 1 else waves[used[0]]
        starts = torch.tensor([offset[w] + s for w, s, _ in spans])
        lens = torch.tensor([e - s for _, s, e in spans])
        frames = [num_mel_frames(e - s, features) for _, s, e in spans]
        spec = self.config.spec  # the family's feature layout (models/families)
        feats, got = log_mel_spans(wave.contiguous(), starts, lens, **features.mel_args,
                                   extra_frames=spec.extra_frames)
        # no_grad, not inference_mode: under FSDP2 the gathered parameters must stay usable by a later backward
        with torch.enable_grad() if grad else torch.no_grad():
            if spec.packed_features:
                emb = self.encode_audio(feats, frames)
            else:
                padded = feats.new_zeros((len(spans), feats.shape[0], int(got.max())))
                for j, piece in enumerate(torch.split(feats, got.tolist(), dim=1)):
                    padded[j, :, : piece.shape[1]] = piece
                emb = self.encode_audio(padded, frames)
        rows = torch.split(emb, [self.num_audio_tokens(f) for f in frames])
        out, i = [], 0
        for pieces in windows:
            out.append(rows[i] if len(pieces) == 1 else torch.cat(rows[i: i + len(pieces)]))
            i += len(pieces)
        return out

    @staticmethod
    def num_audio_tokens(num_frames: int) -> int:
        """Audio tokens for ``num_frames`` mel frames: ``((L - 1) // 2 + 1 - 2) // 2 + 1`` (a family whose encoder
        counts otherwise overrides it; the engine, prompts and trainers all count through the model)."""
        return num_audio_tokens(num_frames)

    @staticmethod
    def transformers_params(params: dict) -> dict:
        """A transformers model's named parameters as the key map reads them (``from_transformers``); a family
        whose in-memory layout differs from its checkpoints' overrides it (models/moe.py's fused experts)."""
        return params

    # ---- embeddings ---------------------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, audio_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``(*ids.shape, hidden)`` with ``audio_embeds`` rows placed at the audio-token positions
        in reading order (row-major over ``input_ids``); their counts must match."""
        x = self.decoder.embed_tokens(input_ids)
        slots = input_ids == self.config.audio_token_id
        n_slots, n_rows = int(slots.sum()), 0 if audio_embeds is None else audio_embeds.shape[0]
        if n_slots != n_rows:
            raise ValueError(f"{n_slots} <|AUDIO|> tokens in input_ids but {n_rows} audio embedding rows")
        if n_rows:
            x = x.masked_scatter(slots[..., None], audio_embeds.to(x.dtype))
        return x

    def embed_gathered(self, input_ids: torch.Tensor, sources: Sequence[torch.Tensor],
                       dst_rows: Sequence[int]) -> torch.Tensor:
        """Flattened token embeddings ``(num_tokens, hidden)`` with each audio row block ``sources[i]`` copied to
        rows ``dst_rows[i]`` on, in one native ``gather_rows`` call straight from the encoder cache's entries
        (the engine's path; ``embed`` places one tensor of rows by the token ids). The blocks must cover exactly
        the ``<|AUDIO|>`` tokens."""
        x = self.decoder.embed_tokens(input_ids)
        n_rows = sum(int(src.shape[0]) for src in sources)
        n_slots = int((input_ids == self.config.audio_token_id).sum())
        if n_slots != n_rows:
            raise ValueError(f"{n_slots} <|AUDIO|> tokens in input_ids but {n_rows} audio embedding rows")
        if n_rows:
            gather_rows([src.to(x.dtype) for src in sources], x, dst_rows)
        return x

    # ---- decoder passes -----------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, input_features: torch.Tensor | None = None,
                num_frames: Sequence[int] | torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Dense causal forward over a padded batch → logits ``(batch, seq, vocab)``.

        input_ids ``(batch, seq)`` (or ``inputs_embeds`` ``(batch, seq, hidden)``); attention_mask ``(batch, seq)``
        with 1 on real tokens; positions default to ``cumsum(attention_mask) - 1`` (one stream through text and
        audio); audio features as in ``encode_audio``, their embeddings placed at the ``<|AUDIO|>`` tokens.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            audio = None if input_features is None else self.encode_audio(input_features, num_frames)
            inputs_embeds = self.embed(input_ids, audio)
        if positions is None:
            b, t = inputs_embeds.shape[:2]
            if attention_mask is None:
                positions = torch.arange(t, device=inputs_embeds.device).expand(b, t)
            else:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0).to(inputs_embeds.device)
        hidden = self.decoder(inputs_embeds, positions, DenseCausalAttention(attention_mask))
        return self.lm_head(hidden)

    def logits_at(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor
                  ) -> torch.Tensor:
        """Dense causal pass over a padded batch (the trainer's), logits only at ``rows`` ``(batch, k)`` positions
        → ``(batch, k, vocab)``: a response's log-probs never materialise logits for the whole sequence."""
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = self.decoder(inputs_embeds, positions, DenseCausalAttention(attention_mask))
        picked = hidden.gather(1, rows[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.lm_head(picked)

    def forward_flat(self, inputs_embeds: torch.Tensor, positions: torch.Tensor,
                     attention: AttentionBackend) -> torch.Tensor:
        """Flattened tokens of many sequences: inputs_embeds ``(num_tokens, hidden)``, positions ``(num_tokens,)``;
        ``attention`` knows which sequence each token belongs to and keeps the KV cache.
        Returns final hidden states ``(num_tokens, hidden)``; pass the rows you sample from to ``compute_logits``."""
        return self.decoder(inputs_embeds, positions, attention)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(*, hidden)`` → ``(*, vocab)`` logits in the model's dtype."""
        return self.lm_head(hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device
