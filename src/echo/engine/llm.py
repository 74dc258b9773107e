"""The Engine behind ``generate``: requests in, interleaved decoding with re-listening, results out.

Reading order: ``Engine.step`` -> ``Scheduler.schedule`` -> ``run_step`` (model forward over the paged cache)
-> ``sample`` -> ``_after_sample`` (EOS / stop / length; ``</seg>`` -> ``relisten.decide``) -> ``_relisten``
(every re-listen of the step: encoder-cache hits, one batched mel + encoder call for the misses) -> the splice
``<|audio_bos|> <|AUDIO|>×n <|audio_eos|>`` is appended to the sequence, whose next chunk prefills it into its
own KV cache while the other sequences keep decoding.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any
from typing import Sequence as Seq

import numpy as np
import torch
from tqdm import tqdm

from ..audio import FeatureConfig
from ..audio import load as load_audio
from ..audio.features import num_audio_tokens, num_mel_frames
from ..config import EngineConfig, SamplingParams
from ..errors import ConfigError, EchoError
from .audio_embed import feature_config_for, span_embeddings
from .block_manager import BlockManager
from .encoder_cache import EncoderCache, audio_hash
from .kv_cache import PagedKVCache
from .relisten import RelistenDecision, decide, ends_with_seg, splice_ids
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


@dataclasses.dataclass(slots=True)
class GenerationResult:
    """``error`` is set (and ``samples`` empty) when the request itself was bad (unreadable audio, empty or
    over-long prompt); the other requests of the batch are unaffected."""

    request_index: int
    prompt_token_ids: list[int]
    samples: list[SampleOutput]
    seconds: float
    error: str | None = None
    audio_samples: int = 0  # length of the request's clip (16 kHz samples)

    @property
    def text(self) -> str:
        return self.samples[0].text


@dataclasses.dataclass(slots=True)
class Request:
    """audio: a path or a 16 kHz array; prompt: question text (wrapped as a user turn with the audio), a chat
    conversation (messages with one audio part), or token ids that already contain the expanded audio."""

    audio: Any
    prompt: Any
    params: SamplingParams = dataclasses.field(default_factory=SamplingParams)


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
        self._requests: dict[int, tuple[list[Sequence], float, list[int]]] = {}
        self._next_request = itertools.count()

    # ---- requests ------------------------------------------------------------------------------------------------

    def add_request(self, audio, prompt, params: SamplingParams | None = None) -> int:
        """Queue one request (n samples); returns its index. Bad audio or prompts raise EchoError here, before any
        step runs, so one bad request never fails a batch in flight."""
        params = params or SamplingParams()
        wave = self._load(audio)
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
        self._requests[index] = (seqs, time.perf_counter(), prompt_ids)
        return index

    def abort(self, request_index: int) -> None:
        """Finish every sample of a request with finish_reason "abort", free its KV blocks and forget it (a client
        that went away); unknown or already collected requests are ignored."""
        entry = self._requests.pop(request_index, None)
        if entry is None:
            return
        for seq in entry[0]:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
        self.scheduler.finished = [s for s in self.scheduler.finished if s.request_index != request_index]

    def _load(self, audio) -> np.ndarray:
        return load_audio(audio, name=os.fspath(audio) if isinstance(audio, (str, os.PathLike)) else None)

    def _prompt_ids(self, prompt, num_frames: int) -> list[int]:
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            n = sum(1 for t in ids if t == self.model.config.audio_token_id)
            if n != num_audio_tokens(num_frames):
                raise EchoError(f"prompt ids hold {n} <|AUDIO|> tokens but the audio needs "
                                f"{num_audio_tokens(num_frames)}")
            return ids
        proc = self.model.processor
        if proc is None:
            raise ConfigError("this model has no tokenizer/chat template: pass prompt token ids")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise EchoError("empty prompt")
            prompt = [{"role": "user", "content": [{"type": "audio", "audio": "<audio>"},
                                                    {"type": "text", "text": prompt}]}]
        if not prompt:
            raise EchoError("empty prompt")
        return proc(prompt, [num_frames])

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
            self._run(chunks)
        for seq in list(self.scheduler.finished):  # a leader that never fit takes its unforked samples with it
            if seq.sample_index == 0 and seq.num_generated == 0:
                for follower in self._requests[seq.request_index][0][1:]:
                    if follower.status == Status.WAITING and follower.leader is seq:
                        follower.status, follower.finish_reason = Status.FINISHED, seq.finish_reason
                        self.scheduler.finished.append(follower)
        finished, self.scheduler.finished = self.scheduler.finished, []
        return finished

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
        tokens, logprobs = sample(torch.stack(rows), [s.params for s in seqs], [s.generator for s in seqs],
                                  [s.token_ids for s in seqs], self.logits_processors,
                                  never=[self.model.config.audio_token_id])
        relisten: list[tuple[Sequence, RelistenDecision]] = []
        for seq, token, lp in zip(seqs, tokens, logprobs):
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
        tail = proc.decode(seq.token_ids[-16:]) if proc is not None else ""
        if any(tail.endswith(s) for s in p.stop):
            self.scheduler.finish(seq, "stop")
            return None
        if sum(seq.mask[seq.num_prompt_tokens:]) >= p.max_new_tokens or len(seq) >= self.config.max_model_len:
            self.scheduler.finish(seq, "length")
            return None
        if proc is None or not ends_with_seg(tail):
            return None
        text = proc.decode(seq.token_ids[seq.num_prompt_tokens:])
        decision = decide(text, len(seq.relistens), seq.clip.num_samples, p.relisten or self.config.relisten)
        seq.relistens.append(RelistenRecord(len(seq.relistens), decision))
        if decision.action == "stop":
            self.scheduler.finish(seq, "relisten_stop")
            return None
        return decision if decision.action == "relisten" else None

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

    def generate(self, requests: Seq[Request], progress: bool = False) -> list[GenerationResult]:
        """Run requests to completion with continuous batching; results in request order."""
        indices: list[int | str] = []
        for r in requests:
            try:
                indices.append(self.add_request(r.audio, r.prompt, r.params))
            except EchoError as exc:  # a bad request is reported in its result; the batch goes on
                indices.append(str(exc))
        live = [i for i in indices if isinstance(i, int)]
        total = sum(len(self._requests[i][0]) for i in live)
        bar = tqdm(total=total, disable=not progress, desc="generate", unit="sample")
        done = 0
        while any(not s.is_finished for i in live for s in self._requests[i][0]):
            self.step()
            now = sum(s.is_finished for i in live for s in self._requests[i][0])
            bar.update(now - done)
            done = now
        bar.close()
        return [self._result(i) if isinstance(i, int) else GenerationResult(-1, [], [], 0.0, i) for i in indices]

    def stream(self, audio, prompt, params: SamplingParams | None = None):
        """Generate one sample step by step, yielding ``(text_delta, relisten_record_or_None)`` as it goes (other
        queued requests keep decoding in the same steps). The last item's record is None and the sample is done."""
        params = params or SamplingParams()
        if params.n != 1:
            raise ConfigError("stream() generates one sample; use generate() for n > 1")
        index = self.add_request(audio, prompt, params)
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
        self._requests.pop(index)

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
        seqs, started, prompt_ids = self._requests.pop(index)
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
                                        s.finish_reason or "unknown"))
        return GenerationResult(index, prompt_ids, samples, time.perf_counter() - started,
                                audio_samples=seqs[0].clip.num_samples)


# ---- the public surface: model.generate and echo.generate ---------------------------------------------------------


def _as_request(item, params: SamplingParams) -> Request:
    if isinstance(item, Request):
        return item
    if isinstance(item, dict):
        return Request(item["audio"], item["prompt"], item.get("params") or params)
    return Request(item.audio, item.prompt, getattr(item, "params", None) or params)


def engine_for(model, config: EngineConfig | None = None) -> Engine:
    """The model's engine (made on first use; a new config makes a new one)."""
    engine = getattr(model, "_echo_engine", None)
    if engine is None or (config is not None and engine.config is not config):
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
        return engine.generate([_as_request(r, params) for r in audio_or_requests], progress=progress)
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
