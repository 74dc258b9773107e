"""After the forward and the sampling: the n samples fork their leader's prompt, each sampled token is appended, and
every sequence is checked for its end (EOS, a stop string, ``max_new_tokens`` / ``max_model_len``, a row that
could not be sampled) and for a ``</seg>`` (cut a token that straddles the tag; ``relisten.decide`` says relisten,
skip or stop). A re-listen is spliced at once: ``<|audio_bos|> <|AUDIO|>×n <|audio_eos|>`` is appended to the
sequence (n follows from the span's length), whose next chunk prefills it into its own KV cache while the other
sequences keep decoding; the next step embeds its rows together with every other audio that step lacks
(runner.py). The scheduler owns one of these.
"""

from __future__ import annotations

from ..audio import FeatureConfig
from ..audio.features import min_audio_samples, num_mel_frames
from ..config import EngineConfig
from ..protocol import SEG_CLOSE, audio_pieces, find_seg_close, splice_ids
from .encoder_cache import EncoderCache
from .relisten import RelistenDecision, decide
from .sequence import AudioRun, RelistenRecord, Sequence, Status


class Postprocessor:
    def __init__(self, model, config: EngineConfig, features: FeatureConfig, encoder_cache: EncoderCache):
        self.model, self.config, self.features = model, config, features
        self.encoder_cache = encoder_cache  # read only: whether a spliced span's rows are cached already

    def __call__(self, sched, step, sampled) -> None:
        """``sched``: the Scheduler (it finishes sequences); ``step``: its ScheduledStep; ``sampled``: the
        runner's Sampled, one token per ``step.samples`` entry."""
        for seq in step.samples:
            if seq.status == Status.WAITING:  # a sample whose leader's prompt is now cached
                sched.fork(seq)
        relisten: list[tuple[Sequence, RelistenDecision]] = []
        for seq, token, lp, error in zip(step.samples, sampled.tokens, sampled.logprobs, sampled.errors):
            if token is None:
                seq.error = error
                sched.finish(seq, "invalid_logits")
                continue
            try:  # what one sequence's text does (decode, a </seg>, the policy) ends that sequence alone
                seq.append_sampled(token, lp if seq.params.logprobs else None)
                decision = self._after_sample(sched, seq)
            except Exception as exc:  # noqa: BLE001
                sched.fail([seq], f"{type(exc).__name__}: {exc}")
                continue
            if decision is not None:
                relisten.append((seq, decision))
        if relisten:
            self.relisten(sched, relisten)

    def _after_sample(self, sched, seq: Sequence) -> RelistenDecision | None:
        p = seq.params
        proc = self.model.processor
        last = seq.token_ids[-1]
        eos = proc.eos_token_ids if proc is not None else []
        if last in eos and not p.ignore_eos:
            sched.finish(seq, "stop")
            return None
        window = seq.token_ids[max(seq.num_prompt_tokens, len(seq) - 16):]
        tail = proc.decode(window) if proc is not None else ""
        dropped = self._cut_at_seg(seq, window, tail) if proc is not None and SEG_CLOSE in tail else None
        if dropped:  # the text now ends at the tag, which comes before anything the dropped part held
            tail = tail[: -len(dropped)]
        if any(tail.endswith(s) for s in p.stop):
            sched.finish(seq, "stop")
            return None
        if self._too_long(sched, seq) or dropped is None:
            return None
        text = proc.decode(seq.token_ids[seq.num_prompt_tokens:])
        decision = decide(text, len(seq.relistens), seq.clip.num_samples, p.relisten or self.config.relisten,
                          min_samples=min_audio_samples(self.features))
        seq.relistens.append(RelistenRecord(len(seq.relistens), decision, dropped_text=dropped))
        if decision.action == "stop":
            sched.finish(seq, "relisten_stop")
            return None
        return decision if decision.action == "relisten" else None

    def _too_long(self, sched, seq: Sequence) -> bool:
        text_tokens = seq.num_sampled + seq.num_forced  # sampled + re-tokenized text
        if text_tokens >= seq.params.max_new_tokens or len(seq) >= self.config.max_model_len:
            sched.finish(seq, "length")
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

    def relisten(self, sched, items: list[tuple[Sequence, RelistenDecision]]) -> None:
        """Splice every span re-listened this step after its sequence's ``</seg>`` (its rows come next step)."""
        for seq, decision in items:
            try:
                self._splice(sched, seq, decision)
            except Exception as exc:  # noqa: BLE001 -- this sequence's splice: it alone ends
                sched.fail([seq], f"{type(exc).__name__}: {exc}")

    def _splice(self, sched, seq: Sequence, decision: RelistenDecision) -> None:
        cfg = self.model.config
        start, end = decision.applied_samples
        n = self.model.num_audio_tokens(num_mel_frames(end - start, self.features))
        marks = None if self.model.processor is None else self.model.processor.time_marks
        ids = splice_ids(n, cfg.audio_bos_token_id, cfg.audio_token_id, cfg.audio_eos_token_id,
                         start / self.features.sampling_rate, marks)
        record = seq.relistens[-1]
        if len(seq) + len(ids) >= self.config.max_model_len:
            sched.finish(seq, "length")
            return
        record.num_audio_tokens, record.position, record.inserted = n, len(seq), True
        # known now for streams and servers; the step that embeds the rows confirms it (runner.py)
        record.cache_hit = (seq.clip.hash, start, end) in self.encoder_cache
        first = ids.index(cfg.audio_token_id)
        pieces = None if marks is None else audio_pieces(ids, cfg.audio_token_id, first, n)
        seq.append_splice(ids, AudioRun(len(seq) + first, n, seq.clip, start, end, record=record, pieces=pieces))
