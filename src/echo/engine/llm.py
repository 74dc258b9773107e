"""The Engine behind ``generate``: requests in, interleaved decoding with re-listening, results out.

Reading order: ``Engine.step`` -> ``Scheduler.schedule`` -> ``run_step`` (model forward over the paged cache)
-> ``sample`` -> ``_after_sample`` (EOS / stop / length; ``</seg>`` -> ``_cut_at_seg`` -> ``relisten.decide``) -> ``_relisten``
(every re-listen of the step: encoder-cache hits, one batched mel + encoder call for the misses) -> the splice
``<|audio_bos|> <|AUDIO|>×n <|audio_eos|>`` is appended to the sequence, whose next chunk prefills it into its
own KV cache while the other sequences keep decoding.

Nothing a request does may outlive it: bad requests are refused at admission (``add_request`` raises EchoError;
``generate`` turns that into the request's ``error``), a sequence whose logits cannot be sampled ends with finish
reason "invalid_logits", a step that raises ends the sequences it ran with finish reason "error" (their blocks
freed, the message in ``SampleOutput.error``) and the engine goes on; ``generate`` and ``stream`` abort their own
requests when they are interrupted, so an engine cached on a model never keeps zombie sequences.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import os
import time
from typing import Any
from typing import Sequence as Seq

import numpy as np
import torch
from tqdm import tqdm

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..audio.features import min_audio_samples, num_audio_tokens, num_mel_frames
from ..config import EngineConfig, SamplingParams
from ..errors import AudioError, ConfigError, EchoError
from ..protocol import SEG_CLOSE, find_seg_close, splice_ids
from .audio_embed import feature_config_for, span_embeddings
from .block_manager import BlockManager
from .encoder_cache import EncoderCache, audio_hash
from .kv_cache import PagedKVCache
from .relisten import RelistenDecision, decide
from .runner import run_step
from .sampler import LogitsProcessor, sample
from .scheduler import Scheduler
from .sequence import Clip, RelistenRecord, Sequence, Status


@dataclasses.dataclass(slots=True)
class SampleOutput:
    """One sample of a request. ``token_ids``/``mask``/``logprobs`` cover everything after the prompt: sampled
    tokens (mask 1, with a log-prob each when asked) and spliced re-listen tokens (mask 0)."""

    text: str
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float] | None
    relistens: list[RelistenRecord]
    finish_reason: str
    error: str | None = None  # the message behind finish reasons "error" and "invalid_logits"


@dataclasses.dataclass(slots=True)
class GenerationResult:
    """``error`` is set (and ``samples`` empty) when the request itself was bad (unreadable, too short or, under
    ``EngineConfig.long_audio="error"``, too long audio; a malformed, empty or over-long prompt; invalid sampling
    parameters); the other requests of the batch are unaffected. ``warnings`` says what was changed to serve the
    request (a clip truncated to the feature extractor's maximum)."""

    request_index: int
    prompt_token_ids: list[int]
    samples: list[SampleOutput]
    seconds: float
    error: str | None = None
    audio_samples: int = 0  # length of the request's clip as the model hears it (16 kHz samples, after truncation)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        return self.samples[0].text


@dataclasses.dataclass(slots=True)
class Request:
    """audio: a path or a 16 kHz array; prompt: question text (wrapped as a user turn with the audio), a chat
    conversation (messages with one audio part), or token ids that already contain the expanded audio.
    params: SamplingParams, or a dict of its fields."""

    audio: Any
    prompt: Any
    params: SamplingParams | dict = dataclasses.field(default_factory=SamplingParams)


class Engine:
    def __init__(self, model, config: EngineConfig | None = None, feature_config: FeatureConfig | None = None,
                 logits_processors: Seq[LogitsProcessor] = ()):
        self.model, self.config = model, config or EngineConfig()
        self.logits_processors = list(logits_processors)
        d = model.config.decoder
        self.features = feature_config or feature_config_for(model)
        if self.config.num_blocks is not None:
            self.kv = PagedKVCache(d.num_layers, self.config.num_blocks, self.config.block_size, d.num_kv_heads,
                                   d.head_dim, model.dtype, model.device)
        else:
            self.kv = PagedKVCache.from_budget(self.config.kv_cache_bytes, d.num_layers, self.config.block_size,
                                               d.num_kv_heads, d.head_dim, model.dtype, model.device)
        self.bm = BlockManager(self.kv.num_blocks, self.config.block_size)
        self.scheduler = Scheduler(self.config, self.bm, self.kv)
        self.encoder_cache = EncoderCache(self.config.encoder_cache_bytes)
        self._ids = itertools.count()
        # request index -> (its samples, start time, prompt ids, warnings)
        self._requests: dict[int, tuple[list[Sequence], float, list[int], list[str]]] = {}
        self._next_request = itertools.count()

    # ---- requests ------------------------------------------------------------------------------------------------

    def add_request(self, audio, prompt, params: SamplingParams | dict | None = None) -> int:
        """Queue one request (n samples); returns its index. Bad audio, prompts or sampling parameters raise
        EchoError here, before any step runs, so one bad request never fails a batch in flight."""
        params = _sampling_params(params)
        wave, warnings = self._load(audio)
        clip = Clip(torch.from_numpy(wave).to(self.model.device), audio_hash(wave))
        embeds, frames, _ = self._encode([(clip, 0, clip.num_samples)])
        prompt_ids = self._prompt_ids(prompt, int(frames[0]))
        if len(prompt_ids) >= self.config.max_model_len:
            raise EchoError(f"prompt of {len(prompt_ids)} tokens does not fit max_model_len="
                            f"{self.config.max_model_len}")
        index = next(self._next_request)
        seqs = []
        for i in range(params.n):
            gen = None
            if params.seed is not None:
                gen = torch.Generator(device=self.model.device).manual_seed(params.seed + i)
            seq = Sequence(next(self._ids), index, i, list(prompt_ids), len(prompt_ids), params, clip, embeds[0],
                           generator=gen, leader=seqs[0] if seqs else None)
            seqs.append(seq)
        self.scheduler.add(seqs[0])  # samples 1..n-1 fork its prompt blocks once it is prefilled
        self._requests[index] = (seqs, time.perf_counter(), prompt_ids, warnings)
        return index

    def abort(self, request_index: int) -> bool:
        """Finish every sample of a request that is still queued or decoding (finish reason "abort"), free their
        KV blocks and forget the request (its result is no longer available). Returns False when the engine
        holds no request of that index (never added, already returned or aborted)."""
        entry = self._requests.pop(request_index, None)
        if entry is None:
            return False
        for seq in entry[0]:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
        self.scheduler.finished = [s for s in self.scheduler.finished if s.request_index != request_index]
        return True

    def check_audio(self, audio) -> list[str]:
        """The warnings a request with this audio would get; the request's error (an EchoError) when it would be
        refused (unreadable, too short, or too long under ``long_audio="error"``)."""
        return self._load(audio)[1]

    def _load(self, audio) -> tuple[np.ndarray, list[str]]:
        """The request's clip as the model hears it, and what was changed to get there."""
        if isinstance(audio, torch.Tensor) and audio.dtype in (torch.bfloat16, torch.float16):
            audio = audio.detach().float()  # numpy has no bfloat16; widening is exact
        wave = load_audio(audio, name=os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else None)
        warnings = []
        shortest = min_audio_samples(self.features)
        if len(wave) < shortest:
            raise AudioError(f"audio of {len(wave)} samples ({len(wave) / 16:.1f} ms) is too short: the encoder "
                             f"needs at least {shortest} samples to give one audio token")
        limit = self.features.max_samples
        if len(wave) > limit:
            seconds = f"{len(wave) / self.features.sampling_rate:.1f} s"
            if self.config.long_audio == "error":
                raise AudioError(f"audio lasts {seconds}, above the feature extractor's maximum of "
                                 f"{self.features.chunk_length} s (EngineConfig.long_audio='error')")
            warnings.append(f"audio of {seconds} truncated to its first {self.features.chunk_length} s, the feature "
                            "extractor's maximum; re-listens are limited to them")
            wave = np.ascontiguousarray(wave[:limit])
        return wave, warnings

    def _prompt_ids(self, prompt, num_frames: int) -> list[int]:
        if isinstance(prompt, torch.Tensor) and prompt.ndim == 1 and not prompt.is_floating_point() \
                and prompt.dtype != torch.bool:
            prompt = prompt.tolist()
        elif isinstance(prompt, np.ndarray) and prompt.ndim == 1 and np.issubdtype(prompt.dtype, np.integer):
            prompt = prompt.tolist()
        if isinstance(prompt, (list, tuple)) and prompt and all(
                isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
            ids = [int(t) for t in prompt]
            n = sum(1 for t in ids if t == self.model.config.audio_token_id)
            if n != num_audio_tokens(num_frames):
                raise EchoError(f"prompt ids hold {n} <|AUDIO|> tokens but the audio needs "
                                f"{num_audio_tokens(num_frames)}")
            return self._check_ids(ids)
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
            _check_conversation(prompt)
        elif not isinstance(prompt, str):
            raise EchoError(f"prompt must be question text, a chat conversation (a list of message dicts) or a list "
                            f"of token ids; got {_describe(prompt)}")
        proc = self.model.processor
        if proc is None:
            raise ConfigError("this model has no tokenizer/chat template: pass prompt token ids")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise EchoError("empty prompt")
            prompt = [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"},
                                                    {"type": "text", "text": prompt}]}]
        try:
            ids = proc(prompt, [num_frames])
        except EchoError:
            raise
        except Exception as exc:  # the checkpoint's Jinja template rejecting the conversation
            raise EchoError(f"the chat template cannot render this conversation ({type(exc).__name__}: {exc})") \
                from exc
        return self._check_ids(ids)

    def _check_ids(self, ids: list[int]) -> list[int]:
        vocab = self.model.config.decoder.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise EchoError(f"prompt holds {len(bad)} token ids outside the model's vocabulary [0, {vocab}): "
                            f"{bad[:5]}")
        return ids

    # ---- audio -> embeddings (cached) ----------------------------------------------------------------------------

    def _encode(self, spans: list[tuple[Clip, int, int]]) -> tuple[list[torch.Tensor], list[int], list[bool]]:
        """Audio embeddings of (clip, start_sample, end_sample) spans: cache hits, plus one mel call and one
        encoder call for all distinct misses (n samples re-listening the same span in one step encode it once).
        Returns the embeddings, each span's valid mel frames, and whether it was served without encoding."""
        keys = [(c.hash, s, e) for c, s, e in spans]
        first: dict = {}
        out: list[torch.Tensor | None] = []
        hit: list[bool] = []
        for i, k in enumerate(keys):
            if k in first:  # a repeat within this call: shares the first one's rows
                self.encoder_cache.stats.hits += 1
                out.append(None)
                hit.append(True)
            else:
                first[k] = i
                out.append(self.encoder_cache.get(k))
                hit.append(out[-1] is not None)
        frames = [num_mel_frames(e - s, self.features) for _, s, e in spans]
        misses = [i for i, o in enumerate(out) if o is None and first[keys[i]] == i]
        if misses:
            clips = list({id(spans[i][0]): spans[i][0] for i in misses}.values())
            index = {id(c): j for j, c in enumerate(clips)}
            rows = span_embeddings(self.model, self.features, [c.wave for c in clips],
                                   [(index[id(spans[i][0])], spans[i][1], spans[i][2]) for i in misses])
            for i, piece in zip(misses, rows):
                out[i] = piece
                self.encoder_cache.put(keys[i], piece)
        out = [o if o is not None else out[first[k]] for o, k in zip(out, keys)]
        return out, frames, hit

    # ---- the step loop -------------------------------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """Run one scheduled step; returns the sequences that finished in it."""
        chunks = self.scheduler.schedule()
        if chunks:
            try:
                self._run(chunks)
            except Exception as exc:  # noqa: BLE001 -- the sequences it ran end; the engine and the rest go on
                message = f"{type(exc).__name__}: {exc}"
                for seq in {id(c.seq): c.seq for c in chunks}.values():
                    for s in [seq] + self._forks_of(seq):
                        if not s.is_finished:
                            s.error = message
                            self.scheduler.finish(s, "error")
        for seq in list(self.scheduler.finished):  # a leader that never fit takes its unforked samples with it
            if seq.sample_index == 0 and seq.num_generated == 0:
                for follower in self._requests[seq.request_index][0][1:]:
                    if follower.status == Status.WAITING and follower.leader is seq:
                        follower.status, follower.finish_reason = Status.FINISHED, seq.finish_reason
                        self.scheduler.finished.append(follower)
        finished, self.scheduler.finished = self.scheduler.finished, []
        return finished

    def _forks_of(self, seq: Sequence) -> list[Sequence]:
        """Samples of seq's request that fork it once its prompt is cached (and so cannot run without it)."""
        entry = self._requests.get(seq.request_index)
        return [f for f in entry[0][1:] if f.leader is seq and f.status == Status.WAITING and not f.block_table] \
            if entry is not None and seq.sample_index == 0 else []

    def _run(self, chunks) -> None:
        logits = run_step(self.model, self.kv, self.bm, chunks)
        rows, seqs = [], []
        for row, chunk in zip(logits, [c for c in chunks if c.samples]):
            seq = chunk.seq
            rows.append(row)
            seqs.append(seq)
            if seq.num_generated == 0 and seq.sample_index == 0:  # the leader's prompt is cached: samples fork it
                for follower in self._requests[seq.request_index][0][1:]:
                    if follower.leader is seq and follower.status == Status.WAITING and not follower.block_table:
                        follower.block_table = self.bm.fork(seq.block_table)
                        follower.num_cached = seq.num_cached
                        self.scheduler.join(follower)
                        rows.append(row)
                        seqs.append(follower)
        if not seqs:
            return
        errors: list[str | None] = []
        tokens, logprobs = sample(torch.stack(rows), [s.params for s in seqs], [s.generator for s in seqs],
                                  [s.token_ids for s in seqs], self.logits_processors,
                                  never=[self.model.config.audio_token_id], errors=errors)
        relisten: list[tuple[Sequence, RelistenDecision]] = []
        for seq, token, lp, error in zip(seqs, tokens, logprobs, errors):
            if token is None:
                seq.error = error
                self.scheduler.finish(seq, "invalid_logits")
                continue
            seq.append_sampled(token, lp if seq.params.logprobs else None)
            decision = self._after_sample(seq)
            if decision is not None:
                relisten.append((seq, decision))
        if relisten:
            self._relisten(relisten)

    def _after_sample(self, seq: Sequence) -> RelistenDecision | None:
        p = seq.params
        proc = self.model.processor
        last = seq.token_ids[-1]
        eos = proc.eos_token_ids if proc is not None else []
        if last in eos and not p.ignore_eos:
            self.scheduler.finish(seq, "stop")
            return None
        window = seq.token_ids[max(seq.num_prompt_tokens, len(seq) - 16):]
        tail = proc.decode(window) if proc is not None else ""
        dropped = self._cut_at_seg(seq, window, tail) if proc is not None and SEG_CLOSE in tail else None
        if dropped:  # the text now ends at the tag, which comes before anything the dropped part held
            tail = tail[: -len(dropped)]
        if any(tail.endswith(s) for s in p.stop):
            self.scheduler.finish(seq, "stop")
            return None
        if self._too_long(seq) or dropped is None:
            return None
        text = proc.decode(seq.token_ids[seq.num_prompt_tokens:])
        decision = decide(text, len(seq.relistens), seq.clip.num_samples, p.relisten or self.config.relisten,
                          min_samples=min_audio_samples(self.features))
        seq.relistens.append(RelistenRecord(len(seq.relistens), decision, dropped_text=dropped))
        if decision.action == "stop":
            self.scheduler.finish(seq, "relisten_stop")
            return None
        return decision if decision.action == "relisten" else None

    def _too_long(self, seq: Sequence) -> bool:
        text_tokens = sum(seq.mask[seq.num_prompt_tokens:]) + seq.num_forced  # sampled + re-tokenized text
        if text_tokens >= seq.params.max_new_tokens or len(seq) >= self.config.max_model_len:
            self.scheduler.finish(seq, "length")
            return True
        return False

    def _cut_at_seg(self, seq: Sequence, window: list[int], tail: str) -> str | None:
        """Whether the token just sampled closes a ``</seg>``; None if not, else the text it held past the tag.

        The reference loop is text-level: it stops at the first ``</seg>``, cuts the text there, and resubmits
        the text up to and including ``</seg>`` with the span's audio after it. A token can end past the tag when
        the tokenizer merges ``>`` with what follows (``>.``, ``>\\n``, ``><``). Such a straddling token is replaced
        by the tokens of its text up to the tag's end (mask 0, no log-prob: they were not sampled, so GRPO never
        trains on them; they count towards ``max_new_tokens`` like the text they replace), its remainder is
        dropped (recorded in ``RelistenRecord.dropped_text``) and the model writes what follows itself after the
        splice, as it would in the reference loop and as SFT's interleaved format teaches it (train/data.py
        tokenizes the text up to each ``</seg>`` on its own). This applies at every ``</seg>``, whatever the
        policy then decides, so that each tag is one turn. When the previous tokens end inside a multi-byte
        character the straddling token completes, the tag is only seen if it ends the token.
        """
        proc = self.model.processor
        seen = proc.decode(window[:-1])
        if not tail.startswith(seen):  # the token completes a character begun before it
            return "" if tail.endswith(SEG_CLOSE) and not seen.endswith(SEG_CLOSE) else None
        end = find_seg_close(tail, len(seen))
        if end is None:
            return None
        if end < len(tail):
            seq.replace_last(proc.tokenizer.encode(tail[len(seen):end], add_special_tokens=False).ids)
        return tail[end:]

    def _relisten(self, items: list[tuple[Sequence, RelistenDecision]]) -> None:
        embeds, _, hits = self._encode([(s.clip, *d.applied_samples) for s, d in items])
        for (seq, _), rows, hit in zip(items, embeds, hits):
            cfg = self.model.config
            ids = splice_ids(rows.shape[0], cfg.audio_bos_token_id, cfg.audio_token_id, cfg.audio_eos_token_id)
            record = seq.relistens[-1]
            record.cache_hit = hit
            if len(seq) + len(ids) >= self.config.max_model_len:
                self.scheduler.finish(seq, "length")
                continue
            record.num_audio_tokens, record.position, record.inserted = rows.shape[0], len(seq), True
            seq.append_splice(ids, rows)

    # ---- batch API -----------------------------------------------------------------------------------------------

    def generate(self, requests: Seq[Request], progress: bool = False,
                 params: SamplingParams | None = None) -> list[GenerationResult]:
        """Run requests to completion with continuous batching; results in request order. A request is a
        Request, a dict with "audio", "prompt" and optionally "params", or an object with .audio and .prompt
        (optionally .params); ``params`` is the default for those without. A bad request gets its error in its
        result; if the run itself is interrupted (an exception, KeyboardInterrupt), every request it added is
        aborted before the exception propagates, so the engine holds nothing of it."""
        indices: list[int | str] = []
        try:
            for r in requests:
                try:
                    indices.append(self.add_request(*_request_fields(r, params)))
                except EchoError as exc:  # a bad request is reported in its result; the batch goes on
                    indices.append(str(exc))
                except Exception as exc:  # noqa: BLE001 -- an input nobody foresaw: still only this request's
                    indices.append(f"bad request ({type(exc).__name__}: {exc})")
            samples = [s for i in indices if isinstance(i, int) for s in self._requests[i][0]]
            bar = tqdm(total=len(samples), disable=not progress, desc="generate", unit="sample")
            done = 0
            while any(not s.is_finished for s in samples):
                self.step()
                now = sum(s.is_finished for s in samples)
                bar.update(now - done)
                done = now
            bar.close()
            return [GenerationResult(-1, [], [], 0.0, i) if isinstance(i, str) else self._result(i)
                    if i in self._requests else GenerationResult(i, [], [], 0.0, "aborted") for i in indices]
        finally:
            for i in indices:  # a no-op once _result has collected them
                if isinstance(i, int):
                    self.abort(i)

    def stream(self, audio, prompt, params: SamplingParams | dict | None = None):
        """Generate one sample step by step, yielding ``(text_delta, relisten_record_or_None)`` as it goes (other
        queued requests keep decoding in the same steps). The last item's record is None and the sample is done.
        A consumer that stops early (``close()``, break, an exception) aborts the request. A sample that ends in
        error (finish reason "error" or "invalid_logits") raises EchoError after its text."""
        params = _sampling_params(params)
        if params.n != 1:
            raise ConfigError("stream() generates one sample; use generate() for n > 1")
        index = self.add_request(audio, prompt, params)
        try:
            seq = self._requests[index][0][0]
            proc = self.model.processor
            printed, seen = "", 0
            while not seq.is_finished:
                self.step()
                text = proc.decode(seq.token_ids[seq.num_prompt_tokens:], skip_special_tokens=True)
                if text.startswith(printed) and not text.endswith("\ufffd"):  # wait out half-decoded characters
                    delta, printed = text[len(printed):], text
                    if delta:
                        yield delta, None
                for record in seq.relistens[seen:]:
                    yield "", record
                seen = len(seq.relistens)
            if seq.error is not None:
                raise EchoError(f"generation failed ({seq.finish_reason}): {seq.error}")
        finally:
            self.abort(index)

    def update_weights(self, named_tensors=(), clear_encoder_cache: bool = True) -> None:
        """Copy new weights into the model in place (the trainer's push between rollouts); ``named_tensors`` is a
        dict or (name, tensor) pairs (empty when the trainer updated this very model in place). The KV cache
        holds no finished request's state; cached encoder outputs were computed with the old weights, so they are
        dropped unless the caller knows the audio encoder did not change."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in (named_tensors.items() if isinstance(named_tensors, dict) else named_tensors):
                if name not in params:
                    raise ConfigError(f"update_weights: the model has no parameter {name!r}")
                params[name].copy_(tensor)
        if clear_encoder_cache:
            self.encoder_cache.clear()

    def _result(self, index: int) -> GenerationResult:
        seqs, started, prompt_ids, warnings = self._requests.pop(index)
        proc = self.model.processor
        samples = []
        for s in seqs:
            gen = s.token_ids[s.num_prompt_tokens:]
            text = proc.decode(gen, skip_special_tokens=True) if proc is not None else ""
            for stop in s.params.stop:
                if text.endswith(stop):
                    text = text[: -len(stop)]
            samples.append(SampleOutput(text, gen, s.mask[s.num_prompt_tokens:],
                                        list(s.logprobs) if s.params.logprobs else None, s.relistens,
                                        s.finish_reason or "unknown", s.error))
        return GenerationResult(index, prompt_ids, samples, time.perf_counter() - started,
                                audio_samples=seqs[0].clip.num_samples, warnings=list(warnings))


# ---- the public surface: model.generate and echo.generate ---------------------------------------------------------


def _sampling_params(params) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if isinstance(params, dict):
        try:
            return SamplingParams(**params)
        except TypeError as exc:
            raise ConfigError(f"sampling parameters {params!r}: {exc}") from None
    if not isinstance(params, SamplingParams):
        raise ConfigError(f"sampling parameters must be SamplingParams or a dict, got {type(params).__name__}")
    params.validate()  # it may have been changed since it was made
    return params


def _request_fields(item, params: SamplingParams | None) -> tuple:
    """(audio, prompt, params) of a Request, a dict or an object with .audio and .prompt."""
    if isinstance(item, dict):
        missing = [k for k in ("audio", "prompt") if k not in item]
        if missing:
            raise EchoError(f"request dict lacks {' and '.join(map(repr, missing))} (it has {sorted(map(str, item))})")
        return item["audio"], item["prompt"], item.get("params") or params
    if not (hasattr(item, "audio") and hasattr(item, "prompt")):
        raise EchoError(f"a request must be a Request, a dict or an object with .audio and .prompt; got "
                        f"{type(item).__name__}")
    return item.audio, item.prompt, getattr(item, "params", None) or params


def _describe(x) -> str:
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _check_conversation(messages: list[dict]) -> None:
    """A chat conversation must hold role/content messages and exactly one audio part (the request's audio)."""
    audio_parts = 0
    for i, m in enumerate(messages):
        if not isinstance(m.get("role"), str):
            raise EchoError(f"message {i} has no role string: {_describe(m)}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)) or not all(isinstance(part, dict) for part in content):
            raise EchoError(f"message {i}: content must be text or a list of parts (dicts), got {_describe(content)}")
        for part in content:
            if part.get("type") == "audio":
                audio_parts += 1
            elif part.get("type") == "text" and not isinstance(part.get("text"), str):
                raise EchoError(f"message {i}: a text part without a text string: {_describe(part)}")
    if audio_parts != 1:
        raise EchoError(f"the conversation has {audio_parts} audio parts; a request carries one audio, so it needs "
                        "exactly one")


def engine_for(model, config: EngineConfig | None = None) -> Engine:
    """The model's engine (made on first use; a config that differs in value makes a new one: an equal fresh
    ``EngineConfig`` reuses the engine and its KV cache)."""
    engine = getattr(model, "_echo_engine", None)
    if engine is None or (config is not None and engine.config != config):
        engine = Engine(model, config)
        object.__setattr__(model, "_echo_engine", engine)  # not a submodule: keep it out of state_dict
    return engine


def generate_on(model, audio_or_requests, prompt=None, sampling_params: SamplingParams | dict | None = None,
                *, engine_config: EngineConfig | None = None, progress: bool = False, **sampling):
    """``model.generate(audio, prompt, **sampling)`` -> GenerationResult, or ``model.generate([requests...],
    sampling_params)`` -> list of GenerationResult (requests: Request, dicts or objects with .audio and
    .prompt, optionally .params). ``sampling`` are SamplingParams fields (temperature, top_p, max_new_tokens...)."""
    batched = isinstance(audio_or_requests, (list, tuple)) and bool(audio_or_requests) and not isinstance(
        audio_or_requests[0], (int, float))
    if batched and (prompt is None or isinstance(prompt, (SamplingParams, dict))):
        prompt, sampling_params = None, sampling_params if prompt is None else prompt  # generate(requests, params)
    if isinstance(sampling_params, dict):
        sampling = {**sampling_params, **sampling}
        sampling_params = None
    params = sampling_params or SamplingParams(**sampling)
    engine = engine_for(model, engine_config)
    if batched:
        return engine.generate(audio_or_requests, progress=progress, params=params)
    [result] = engine.generate([Request(audio_or_requests, prompt, params)])
    if result.error is not None:
        raise EchoError(result.error)
    return result


def generate(audio, prompt=None, *, model, sampling_params: SamplingParams | None = None, **sampling):
    """``echo.generate(audio, prompt, model=dir_or_model, temperature=0, ...)``: load the model if given a path,
    then generate with re-listening (see ``generate_on``)."""
    if isinstance(model, (str, os.PathLike)):
        from ..models import load

        model = load(model)
    return generate_on(model, audio, prompt, sampling_params, **sampling)
