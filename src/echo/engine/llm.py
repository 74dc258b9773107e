"""The Engine behind ``generate``: requests in, interleaved decoding with re-listening, results out.

Reading order: ``Engine.step`` = ``Scheduler.schedule`` (scheduler.py: which chunks run, which sequences sample)
-> ``ModelRunner.run`` (runner.py: the model's forward over the paged cache, then ``sample``) ->
``Scheduler.postprocess`` (postprocess.py: forks of the n samples; EOS / stop / length; ``</seg>`` ->
``relisten.decide`` -> the step's re-listens embedded together and spliced into their sequences). A request is
checked at admission (admission.py) and held as one ``RequestState`` (request_state.py) until ``result`` turns it
into a ``GenerationResult`` (outputs.py).

Nothing a request does may outlive it: bad requests are refused at admission (``add_request`` raises EchoError;
``generate`` turns that into the request's ``error``), a sequence whose logits cannot be sampled ends with finish
reason "invalid_logits", a sequence whose step raises because of it ends alone with finish reason "error" (its
blocks freed, the message in ``SampleOutput.error``: ``_run_contained`` reruns the step in halves to find it) and
the engine and the other sequences go on; ``generate`` and ``stream`` abort their own
requests when they are interrupted, so an engine cached on a model never keeps zombie sequences.
"""

from __future__ import annotations

import itertools
from typing import Sequence as Seq

import torch
from tqdm import tqdm

from ..audio import FeatureConfig
from ..audio.features import num_mel_frames
from ..config import EngineConfig, SamplingParams
from ..errors import ConfigError, EchoError
from .admission import load_clip, prompt_audio, prompt_ids, request_fields, sampling_params
from .block_manager import BlockManager
from .cuda_graphs import decode_graphs_for
from .detokenizer import IncrementalDetokenizer
from .encoder_cache import EncoderCache, audio_hash
from .kv_cache import PagedKVCache
from .outputs import GenerationResult, Request, SampleOutput
from .postprocess import Postprocessor
from .request_state import RequestState
from .runner import ModelRunner
from .sampler import LogitsProcessor
from .scheduler import ScheduledStep, Scheduler, split_step
from .sequence import Clip, Sequence

__all__ = ["Engine", "GenerationResult", "Request", "RequestState", "SampleOutput"]


class Engine:
    def __init__(self, model, config: EngineConfig | None = None, feature_config: FeatureConfig | None = None,
                 logits_processors: Seq[LogitsProcessor] = ()):
        self.model, self.config = model, config or EngineConfig()
        self.logits_processors = list(logits_processors)
        c = self.config
        self.features = feature_config or model.resolve_feature_config()
        self.kv = PagedKVCache.for_engine(model.config.decoder, c, model.dtype, model.device)
        self.bm = BlockManager(self.kv.num_blocks, c.block_size)
        self.encoder_cache = EncoderCache(c.encoder_cache_bytes)
        self.scheduler = Scheduler(c, self.bm, self.kv, Postprocessor(model, c, self.features, self.encoder_cache))
        self.runner = ModelRunner(model, self.kv, self.bm, self.features, self.encoder_cache,
                                  decode_graphs_for(model, self.kv, c))
        self._ids, self._next_request = itertools.count(), itertools.count()  # sequence ids, request indices

    # ---- requests ------------------------------------------------------------------------------------------------

    def add_request(self, audio, prompt, params: SamplingParams | dict | None = None) -> int:
        """Queue one request (n samples); returns its index. Bad audio, prompts or sampling parameters raise
        EchoError here, before any step runs, so one bad request never fails a batch in flight."""
        params = sampling_params(params)
        wave, warnings = load_clip(audio, self.features, self.config)
        clip = Clip(torch.from_numpy(wave).to(self.model.device), audio_hash(wave))
        ids = prompt_ids(self.model, prompt, num_mel_frames(clip.num_samples, self.features), self.config.max_model_len)
        audio = prompt_audio(ids, self.model.config, clip)  # embedded by the step that prefills it
        state = RequestState.create(next(self._next_request), ids, params, clip, audio, warnings, self._ids)
        self.scheduler.add(state)
        return state.index

    def abort(self, request_index: int) -> bool:
        """Finish every sample of a request that is still queued or decoding (finish reason "abort"), free their
        KV blocks and forget the request (its result is no longer available). Returns False when the engine
        holds no request of that index (never added, already returned or aborted)."""
        return self.scheduler.abort(request_index)

    def check_audio(self, audio) -> list[str]:
        """The warnings a request with this audio would get; the request's error (an EchoError) when it would be
        refused (unreadable, too short, or too long under ``long_audio="error"``)."""
        return load_clip(audio, self.features, self.config)[1]

    def pending(self) -> list[int]:
        """Indices of the requests the engine holds (queued, decoding, or finished and not collected)."""
        return list(self.scheduler.requests)

    def request(self, index: int) -> RequestState:
        """A held request's state (its samples as they decode, its prompt ids), to read, not to change."""
        state = self.scheduler.requests.get(index)
        if state is None:
            raise EchoError(f"the engine holds no request {index} (never added, aborted or its result collected)")
        return state

    def is_done(self, index: int) -> bool:
        """Whether every sample of the request has finished (its result can be collected)."""
        return self.request(index).is_finished

    def result(self, index: int) -> GenerationResult:
        """The finished request's result; the engine forgets the request."""
        if not self.is_done(index):
            raise EchoError(f"request {index} is still decoding: step until is_done({index}), or abort it")
        return self.scheduler.requests.pop(index).result(self.model.processor)

    # ---- the step ------------------------------------------------------------------------------------------------

    def step(self) -> list[Sequence]:
        """One step, schedule -> run -> postprocess; returns the sequences that finished in it."""
        step = self.scheduler.schedule()
        if step.chunks:
            self._run_contained(step)
        return self.scheduler.drain()

    def _run_contained(self, step: ScheduledStep) -> None:
        """Run and postprocess ``step``. When the run raises, its chunks run again in halves until the chunk at
        fault is alone: only that chunk's sequence (and the samples waiting to fork it) ends with finish reason
        "error", the others get the tokens they would have had. A rerun is safe because a failed run changed no
        sequence: a chunk rewrites the same K/V slots, and sampling comes last (a row that cannot be sampled is the
        sampler's own per-sequence "invalid_logits"; only a sampler that raised after drawing would shift seeded
        draws). A failure that every part repeats (a broken device) ends each sequence, after about 2n runs.
        Postprocess contains its failures per sequence itself; one that still escapes it is not rerun (it changes
        sequences as it goes) and ends the sequences of this part of the step."""
        try:
            sampled = self.runner.run(step, self.logits_processors)
        except Exception as exc:  # noqa: BLE001 -- contained below; the engine and the rest go on
            if len(step.chunks) == 1:
                self.scheduler.fail(step, f"{type(exc).__name__}: {exc}")
                return
            for chunk in step.chunks:  # the run may have marked them cached before it raised
                chunk.seq.num_cached = chunk.start
            for half in split_step(step):
                self._run_contained(half)
            return
        try:
            self.scheduler.postprocess(step, sampled)
        except Exception as exc:  # noqa: BLE001 -- the sequences it ran end; the engine and the rest go on
            self.scheduler.fail(step, f"{type(exc).__name__}: {exc}")

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
                    indices.append(self.add_request(*request_fields(r, params)))
                except EchoError as exc:  # a bad request is reported in its result; the batch goes on
                    indices.append(str(exc))
                except Exception as exc:  # noqa: BLE001 -- an input nobody foresaw: still only this request's
                    indices.append(f"bad request ({type(exc).__name__}: {exc})")
            samples = [s for i in indices if isinstance(i, int) for s in self.request(i).samples]
            with tqdm(total=len(samples), disable=not progress, desc="generate", unit="sample") as bar:
                while any(not s.is_finished for s in samples):
                    self.step()
                    bar.update(sum(s.is_finished for s in samples) - bar.n)
            held = set(self.pending())
            return [GenerationResult(-1, [], [], 0.0, i) if isinstance(i, str) else self.result(i) if i in held
                    else GenerationResult(i, [], [], 0.0, "aborted") for i in indices]
        finally:
            for i in indices:  # a no-op once result() has collected them
                if isinstance(i, int):
                    self.abort(i)

    def stream(self, audio, prompt, params: SamplingParams | dict | None = None):
        """Generate one sample step by step, yielding ``(text_delta, relisten_record_or_None)`` as it goes (other
        queued requests keep decoding in the same steps). The last item's record is None and the sample is done.
        A consumer that stops early (``close()``, break, an exception) aborts the request. A sample that ends in
        error (finish reason "error" or "invalid_logits") raises EchoError after its text."""
        params = sampling_params(params)
        if params.n != 1:
            raise ConfigError("stream() generates one sample; use generate() for n > 1")
        index = self.add_request(audio, prompt, params)
        try:
            seq, detok, seen = self.request(index).samples[0], IncrementalDetokenizer(self.model.processor), 0
            while not seq.is_finished:
                self.step()
                delta = detok.emit(detok.text(seq.token_ids[seq.num_prompt_tokens:]), final=seq.is_finished)
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

