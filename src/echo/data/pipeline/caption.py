"""Stage 1, captions: three text views of every clip (a comprehensive description, the speech, the music), from
an OpenAI-compatible endpoint that takes ``input_audio`` parts (as vLLM serves Qwen2.5-Omni) or from a local echo
model batched through echo's engine. Output rows: ``{"key": clip id, "clip": ..., "captions": {view: text}}``, or
``"dropped": "caption:<reason>"``."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

from tqdm import tqdm

from .cache import cache_key, sha256
from .client import Reply
from .clips import Clip, find_clips, my_clips
from .config import PipelineConfig
from .prompts import CAPTION_VIEWS, Prompt
from .stage import StageContext, ask_or_drop, print_dry_run, run_stage

ABSENT = "NONE"


def audio_part(clip: Clip) -> dict:
    """The clip as an ``input_audio`` content part: wav and mp3 files as they are, anything else as 16-bit wav."""
    path = Path(clip.audio)
    if path.suffix.lower() in (".wav", ".mp3"):
        data, fmt = path.read_bytes(), path.suffix.lower()[1:]
    else:
        import soundfile as sf

        wave, rate = sf.read(str(path), dtype="float32")
        buf = io.BytesIO()
        sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
        data, fmt = buf.getvalue(), "wav"
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}


def view_prompts(cfg: PipelineConfig) -> dict[str, Prompt]:
    return {view: Prompt(f"caption_{view}", cfg.prompts_dir) for view in CAPTION_VIEWS}


def _row(clip: Clip, texts: dict[str, str]) -> dict:
    return {"key": clip.id, "clip": clip.to_json(),
            "captions": {v: ("" if t.strip() == ABSENT else t.strip()) for v, t in texts.items()}}


def run_caption(cfg: PipelineConfig) -> StageContext:
    """Caption this shard's clips that have no row yet. Unreadable files get a dropped row."""
    cfg.require("caption")
    ctx = StageContext(cfg, "caption", cfg.caption)
    done = ctx.store.done(redo_reason="caption:request_failed" if cfg.retry_failed else None)
    clips, bad = find_clips(cfg.audio_dir, cfg.meta, only=my_clips(cfg.audio_dir, cfg.rank, cfg.world_size) - done)
    if not cfg.dry_run:
        ctx.store.write([{"key": cid, "dropped": "caption:" + why.split(" ")[0]} for cid, why in bad])
    todo = clips
    prompts = view_prompts(cfg)
    if cfg.caption_local is not None:
        _caption_local(ctx, todo, prompts)
        return ctx

    async def handle(clip: Clip) -> list[dict]:
        part = audio_part(clip)
        asks = [ask_or_drop(ctx, [{"role": "user", "content": [part, {"type": "text", "text": prompt.render(
            duration=f"{clip.duration_s:.2f}")}]}], clip.sha256) for prompt in prompts.values()]
        answers = await asyncio.gather(*asks)  # every view is asked (and cached) even when one fails
        drops = [drop for _, drop in answers if drop]
        if drops:
            return [{"key": clip.id, "clip": clip.to_json(), "dropped": drops[0]}]
        if any(reply is None for reply, _ in answers):
            return []  # dry run
        return [_row(clip, {view: reply.text for view, (reply, _) in zip(prompts, answers)})]

    run_stage(ctx, todo, handle, "caption")
    if cfg.dry_run:
        print_dry_run(ctx, len(todo))
    return ctx


def _caption_local(ctx: StageContext, clips: list[Clip], prompts: dict[str, Prompt]) -> None:
    """Batches of clips through ``echo.load(dir).generate``: every uncached (clip, view) of a batch in one call."""
    import echo
    from echo.config import SamplingParams

    cfg = ctx.cfg
    model_name = f"local:{cfg.caption_local.resolve()}"
    params = {"max_tokens": cfg.local_max_new_tokens, "temperature": 0.0, "response_format": None}
    sampling = SamplingParams(temperature=0.0, max_new_tokens=cfg.local_max_new_tokens)
    model = None
    bar = tqdm(total=len(clips), desc="caption (local)", unit="clip", disable=not cfg.progress)
    try:
        for start in range(0, len(clips), cfg.local_batch):
            batch = clips[start:start + cfg.local_batch]
            asks = []  # (clip, view, text, key)
            for clip in batch:
                for view, prompt in prompts.items():
                    text = prompt.render(duration=f"{clip.duration_s:.2f}")
                    key = cache_key("caption", model_name, [{"role": "user", "content": text}], params, clip.sha256)
                    asks.append((clip, view, text, key))
            missing = [a for a in asks if a[3] not in ctx.cache]
            if cfg.dry_run:
                ctx.dry_requests += [{"model": model_name, "audio": a[0].audio, "prompt": a[2]} for a in missing]
                bar.update(len(batch))
                continue
            if missing:
                model = model or echo.load(cfg.caption_local)
                results = model.generate([{"audio": c.audio, "prompt": t} for c, _, t, _ in missing], sampling)
                for (clip, _, _, key), res in zip(missing, results):
                    if res.error is not None:
                        reply = Reply(None, "error", refusal=res.error)
                    else:
                        sample = res.samples[0]
                        reply = Reply(sample.text, "length" if sample.finish_reason == "length" else "stop", None,
                                      len(res.prompt_token_ids), len(sample.token_ids))
                    ctx.usage.requests += 1
                    ctx.usage.add_tokens(reply, None)
                    ctx.remember(key, reply, sha256(key))
            rows = []
            for clip in batch:
                texts, drop = {}, None
                for c, view, _, key in asks:
                    if c is clip:
                        reply = Reply.from_json(ctx.cache.get(key))
                        # a caption cut at the token limit still describes the clip; an engine error does not
                        drop = drop or ("audio_error" if reply.finish_reason == "error" else None)
                        texts[view] = reply.text or ""
                rows.append({"key": clip.id, "clip": clip.to_json(), "dropped": f"caption:{drop}"} if drop
                            else _row(clip, texts))
            ctx.store.write(rows)
            bar.update(len(batch))
    finally:
        bar.close()
        ctx.cache.close()
    if cfg.dry_run:
        print(f"[dry run] caption: {len(ctx.dry_requests)} generations would run on {cfg.caption_local}")
        for req in ctx.dry_requests[:3]:
            print(req)
