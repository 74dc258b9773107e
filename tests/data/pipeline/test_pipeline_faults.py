"""The whole pipeline against the scripted server with every fault it can inject: the run finishes, every clip and
item is either written or counted under a named reason, Retry-After is honoured, and the rules spare the judge."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
from conftest import write_clips
from scripted import CAPTION, item, judge, synth

from echo.cli import main

FAULTS = ["429", "500", "timeout", "drop"]


def endpoint_args(url: str, *extra: str) -> list[str]:
    return ["--caption-endpoint", url, "--caption-model", "omni", "--llm-endpoint", url, "--llm-model", "r1",
            "--timeout", "0.5", "--max-retries", "4", "--backoff", "0.01", "--backoff-max", "0.05",
            "--concurrency", "4", "--no-progress", *extra]


def routing_script(audio) -> list[dict]:
    sha = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in audio.iterdir()}
    return [
        # c5's description meets every transient fault once and is then answered; c7's never is; c6 is refused
        {**CAPTION[0], "name": "caption c5", "audio_sha256": sha["c5"], "faults": FAULTS},
        {**CAPTION[0], "name": "caption c7", "audio_sha256": sha["c7"], "faults": ["500"] * 8},
        {**CAPTION[0], "name": "caption c6", "audio_sha256": sha["c6"], "refusal": "I can't help with that."},
        *CAPTION,
        synth("c0", [item("c0", 0), item("c0", 1)]),
        synth("c1", [item("c1", 0), item("c1", 1, answer="a trumpet")]),      # c1/1: answer not among choices
        synth("c2", [item("c2", 0, span="1.50, 3.40"), item("c2", 1)]),        # c2/0: span past the 3 s clip
        synth("c3", refusal="I won't."),
        synth("c4", reply='{"items": [{"question": "Wh', finish_reason="length"),
        synth("c5", reply='{"items": [oops]}'),
        synth("c7", []),                                # only reached by --retry-failed
        judge("c0/0", faults=["429"]),                  # SFT, after a 429 with Retry-After
        {**judge("c0/1", cot=False),                    # RL: the judge rejects the CoT (after thinking aloud)
         "reply": "<think>The doorbell is invented.</think>" + judge("c0/1", cot=False)["reply"]},
        judge("c1/0", qa=False),                        # dropped by the judge
        judge("c1/1"),                                  # never asked: the rules drop it first
        judge("c2/0"),                                  # RL: the rules rejected the CoT, the question is fine
        {**judge("c2/1"), "reply": "qa_valid: yes"},    # not JSON: dropped under a named reason
    ]


def test_faults_routing_and_rerun(server, tmp_path):
    audio, meta = write_clips(tmp_path, 8)
    server.script(routing_script(audio), retry_after=0.3, hang=1.5)
    out = tmp_path / "out"
    argv = ["data", "pipeline", "--audio", str(audio), "--meta", str(meta), "--out", str(out),
            *endpoint_args(server.url)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["caption"] == {"clips": 8, "captioned": 6,
                                 "dropped": {"caption:refusal": 1, "caption:request_failed": 1}}
    assert report["synthesize"]["items"] == 6
    assert report["synthesize"]["dropped"] == {"synthesize:malformed_json": 1, "synthesize:refusal": 1,
                                               "synthesize:truncated": 1}
    f = report["filter"]
    assert (f["sft"], f["rl"]) == (1, 2)
    assert f["rl_reasons"] == {"judge:cot_invalid": 1, "rules:span_outside_clip": 1}
    assert f["dropped"] == {"judge:malformed_json": 1, "judge:qa_invalid": 1, "rules:answer_not_in_choices": 1}
    assert f["sft"] + f["rl"] + sum(f["dropped"].values()) == report["synthesize"]["items"]  # every item counted
    assert report["export"] == {"eaqa_sft.jsonl": 1, "sft_messages.jsonl": 1, "eaqa_rl.jsonl": 2,
                                "eaqa_rl.parquet": 2}
    assert report["usage"]["filter"]["answers"] == 5 and report["usage"]["synthesize"]["prompt_tokens"] > 0

    counts = server.counts()
    assert "judge c1/1" not in counts["rules"] and "unmatched" not in counts["rules"]
    assert counts["rules"]["caption c5"] == len(FAULTS) + 1  # one attempt per fault, then the answer
    assert counts["rules"]["caption c7"] == 5                # the first attempt and 4 retries
    t0, t1 = counts["rule_times"]["judge c0/0"]
    assert t1 - t0 >= 0.3  # Retry-After honoured (the backoff alone waits at most 0.05 s)

    sft = [json.loads(x) for x in (out / "export" / "eaqa_sft.jsonl").read_text().splitlines()]
    assert [r["id"] for r in sft] == ["c0#llm0"] and sft[0]["spans"] == [[1.5, 2.6]]
    rl = pq.read_table(out / "export" / "eaqa_rl.parquet").to_pylist()
    assert [r["extra_info"]["id"] for r in rl] == ["c0#llm1", "c2#llm0"]
    assert all(r["reward_model"]["ground_truth"] == "a car horn" and r["prompt"][0]["content"].startswith("<audio>")
               for r in rl)

    # a rerun sends nothing and changes nothing; --retry-failed sends only what never got an answer
    before = {p.name: p.read_bytes() for p in (out / "export").iterdir()}
    assert main(argv) == 0
    assert server.counts()["rules"] == counts["rules"]
    assert main(argv + ["--retry-failed"]) == 0
    # c7's description: 3 more faults (5 were spent), then answered; its other views were cached the first time
    sent = {k: n - counts["rules"].get(k, 0) for k, n in server.counts()["rules"].items()}
    assert {k: n for k, n in sent.items() if n} == {"caption c7": 4, "synth": 1}
    report = json.loads((out / "report.json").read_text())
    assert report["caption"] == {"clips": 8, "captioned": 7, "dropped": {"caption:refusal": 1}}
    assert {p.name: p.read_bytes() for p in (out / "export").iterdir()} == before  # c7 gave no questions


def test_requests_per_minute_limit(server, tmp_path):
    audio, meta = write_clips(tmp_path, 4)
    server.script(list(CAPTION))
    assert main(["data", "caption", "--audio", str(audio), "--out", str(tmp_path / "out"), "--caption-endpoint",
                 server.url, "--caption-model", "omni", "--concurrency", "8", "--rpm", "300", "--no-progress"]) == 0
    times = sorted(server.counts()["rule_times"]["caption"])
    assert len(times) == 12
    # 300/min = 5/s with a one-second bucket: 5 at once, then one every 0.2 s, 1.4 s in all (unlimited, 12 requests
    # at concurrency 8 take a few ms); the margin absorbs late first arrivals on a loaded machine
    assert times[-1] - times[0] >= 0.7


def test_rate_limiter_schedule():
    import asyncio

    from echo.data.pipeline.client import RateLimiter

    now = [0.0]

    async def sleep(s):
        now[0] += s

    async def run(per_minute, amounts):
        limiter = RateLimiter(per_minute, clock=lambda: now[0], sleep=sleep)
        stamps = []
        for amount in amounts:
            await limiter.acquire(amount)
            stamps.append(round(now[0], 6))
        return stamps

    assert asyncio.run(run(300, [1] * 8)) == [0, 0, 0, 0, 0, 0.2, 0.4, 0.6]  # 5/s: a one-second burst, then 5/s
    now[0] = 0.0
    assert asyncio.run(run(6000, [100, 50, 100])) == [0, 0.5, 1.5]  # tokens: 100/s, a bucket of 100
    now[0] = 0.0
    assert asyncio.run(run(None, [1] * 100)) == [0] * 100


def test_a_refused_key_stops_the_stage_instead_of_dropping_every_clip(server, tmp_path, capsys):
    audio, meta = write_clips(tmp_path, 2)
    server.script([{**rule, "faults": ["401"]} for rule in CAPTION])
    argv = ["data", "caption", "--audio", str(audio), "--out", str(tmp_path / "out"), "--caption-endpoint",
            server.url, "--caption-model", "omni", "--caption-api-key-env", "ECHO_TEST_KEY", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "$ECHO_TEST_KEY" in err
    assert not list((tmp_path / "out" / "caption").glob("*.jsonl"))  # nothing recorded as done
    assert main(argv) == 0  # the second attempt of each prompt is answered: every clip is captioned
    assert json.loads((tmp_path / "out" / "report.json").read_text())["caption"]["captioned"] == 2


def test_unreadable_audio_is_counted_not_fatal(server, tmp_path):
    audio, meta = write_clips(tmp_path, 2)
    (audio / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    server.script(list(CAPTION))
    assert main(["data", "caption", "--audio", str(audio), "--out", str(tmp_path / "out"), "--caption-endpoint",
                 server.url, "--caption-model", "omni", "--no-progress"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["caption"] == {"clips": 3, "captioned": 2, "dropped": {"caption:audio_unreadable": 1}}
