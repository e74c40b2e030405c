"""Several processes over one ledger: each conversation paid for once and written once, and one
rate limit held by all of them (issue 9).

These run real ``enrich batch`` processes against the fake servers on loopback, and the ledger's
own operations from several processes at once; the back ends' fixture (``ledger_factory``, in
conftest.py) runs the ledger-level ones against SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter

from conftest import CHATDASH_KEY, OPENAI_KEY, TRANSCRIPT

from enrich.engine.leases import acquire, claim_write
from enrich.ledger import Fingerprint, State, open_ledger
from enrich.models.usage import Usage
from enrich.testing import FakeChatDash, FakeLLM, Reply
from enrich.testing.llm import valid_answer

REF = re.compile(r"ref (\d+)")


def _items(n: int) -> list[dict]:
    return [
        {
            "agent_id": "agent-1",
            "conversation_id": f"c{i:04d}",
            "transcript": TRANSCRIPT + f"User: ref {i}\n",
        }
        for i in range(n)
    ]


def _env(llm: FakeLLM, cd: FakeChatDash, ledger) -> dict[str, str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": llm.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "CHATDASH_BASE_URL": cd.url,
        "ENRICH_LEDGER": str(ledger),
    }
    env.pop("ENRICH_CONFIG", None)
    return env


def _asked(llm: FakeLLM) -> Counter:
    """How many times the LLM was asked about each conversation (by its ``ref N`` line)."""
    counts: Counter = Counter()
    for request in llm.requests:
        text = json.dumps(request["messages"])
        found = REF.findall(text)
        assert found, "a request that names no conversation"
        counts[int(found[-1])] += 1
    return counts


def _batch(path, out, env, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enrich", "batch", str(path), "-o", str(out), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_batches_over_one_input_and_ledger_pay_and_write_each_conversation_once(
    tmp_path, ledger_factory
):
    n = 400
    ledger = ledger_factory()
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _items(n)))
    with FakeLLM(latency=0.02) as llm, FakeChatDash(api_key=CHATDASH_KEY) as cd:
        env = _env(llm, cd, ledger)
        procs = [_batch(path, tmp_path / f"out{i}.jsonl", env, "-j", "32") for i in range(2)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors

        asked = _asked(llm)
        assert sorted(asked) == list(range(n)) and set(asked.values()) == {1}, (
            f"paid twice: {[k for k, v in asked.items() if v > 1][:5]}"
        )
        put = Counter(conv for _, conv, _, _ in cd.puts)
        assert len(put) == n and set(put.values()) == {1}, (
            f"written twice: {[k for k, v in put.items() if v > 1][:5]}"
        )
    # Each process reports every conversation, as written by itself or by the other one.
    for i in range(2):
        rows = [json.loads(line) for line in (tmp_path / f"out{i}.jsonl").read_text().splitlines()]
        assert len(rows) == n and all(r["error"] is None for r in rows)
        status = Counter(r["status"] for r in rows)
        assert set(status) <= {"written", "skipped"}, status  # skipped: the other one wrote it
    entries = open_ledger(ledger).entries()
    assert len(entries) == n and {e.state for e in entries} == {State.WRITTEN}


def test_batches_sharing_a_ledger_share_the_rate_limit(tmp_path, ledger_factory):
    """Two processes at --rpm 600 together: 10 requests a second, not 20."""
    ledger = ledger_factory()
    items = _items(90)
    stamps: list[float] = []
    lock = threading.Lock()

    def responder(request):
        with lock:
            stamps.append(time.monotonic())
        return Reply.json(valid_answer(request))

    with (
        FakeLLM(responder=responder) as llm,
        FakeChatDash(api_key=CHATDASH_KEY) as cd,
    ):
        env = _env(llm, cd, ledger)
        procs = []
        for i in range(2):  # each its own half of the conversations
            part = tmp_path / f"in{i}.jsonl"
            part.write_text("".join(json.dumps(r) + "\n" for r in items[i::2]))
            procs.append(_batch(part, tmp_path / f"out{i}.jsonl", env, "--rpm", "600"))
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        assert llm.rate_limited == 0 and len(stamps) == 90

    stamps.sort()
    rate = 600 / 60 * 0.97  # the limiter aims 3% under the limit
    # GCRA with a 1 s burst: at most rate * (window + 1) + 1 requests in any window (one more
    # for the jitter of their arrival). Unshared, two processes would send twice that.
    for i, start in enumerate(stamps):
        for window in (2.0, 4.0):
            inside = sum(1 for t in stamps[i:] if t - start <= window)
            assert inside <= rate * (window + 1) + 2, (window, inside)
    # Two processes alone would each run 45 requests at 10/s (under 5 s): together, about 8 s
    assert stamps[-1] - stamps[0] >= (90 - rate) / rate * 0.9


# -- the ledger's operations from several processes at once -------------------------------------


def _pace_many(location: str, count: int, queue) -> None:
    ledger = open_ledger(location)
    starts = []
    for _ in range(count):
        # one request a second: the calls, made at once, book slots a second apart
        wait = ledger.pace("llm:test", request_interval=1.0, token_interval=0.0, burst=0.0)
        starts.append(time.time() + wait)
    queue.put(starts)


def test_pace_gives_every_process_its_own_slot(ledger_factory):
    location = ledger_factory()
    open_ledger(location).stats()  # created (and migrated) once, before the race
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_pace_many, args=(location, 10, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    starts = sorted(s for _ in procs for s in queue.get(timeout=60))
    for p in procs:
        p.join(30)
    assert len(starts) == 40
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Distinct slots a second apart, whichever process booked them (each caller reads the clock
    # a little after the ledger did: a few ms each way). Racing bookings would share a slot.
    assert all(abs(gap - 1.0) < 0.2 for gap in gaps), gaps


def test_a_429_anywhere_pauses_and_slows_every_sharer(ledger_factory):
    location = ledger_factory()
    one, two = open_ledger(location), open_ledger(location)
    assert one.pace("k", request_interval=0.1, token_interval=0, burst=0) == 0
    assert one.pace_penalize("k", 2.0) == 2.0
    wait = two.pace("k", request_interval=0.1, token_interval=0, burst=0)
    assert 1.8 < wait <= 2.0 + 0.2  # the pause, for the other sharer too
    # slowed to 0.8: the next slot is 0.1 / 0.8 later, not 0.1
    before = time.monotonic()
    after = two.pace("k", request_interval=0.1, token_interval=0, burst=0)
    elapsed = time.monotonic() - before
    assert 0.125 - elapsed - 0.03 <= after - wait <= 0.155
    before = time.monotonic()
    for _ in range(200):
        two.pace_settle("k", 0.0)  # successes: the speed recovers, never past 1
    elapsed = time.monotonic() - before  # each wait is counted from its own call
    recovered = two.pace("k", request_interval=0.1, token_interval=0, burst=0)
    assert 0.125 - elapsed - 0.03 <= recovered - after <= 0.155  # that slot was booked at 0.8
    before = time.monotonic()
    last = two.pace("k", request_interval=0.1, token_interval=0, burst=0)
    elapsed = time.monotonic() - before
    assert 0.1 - elapsed - 0.03 <= last - recovered <= 0.13


FP = Fingerprint(transcript_hash="t", model="m", prompt_hash="p", taxonomy_hash="x")
BODY = {"summary": "s"}


def _record(ledger, conv: str, state: State = State.PENDING) -> None:
    ledger.record(
        "a", conv, FP, enrichment={"enrichment": {}}, body=BODY, usage=Usage(), cost=0.0,
        state=state,
    )  # fmt: skip


def _hold_then_write(location: str, conv: str, ready, seconds: float) -> None:
    ledger = open_ledger(location)
    assert ledger.claim("a", conv)
    ready.set()
    time.sleep(seconds)
    ledger.written("a", conv, BODY)


def test_a_claimed_write_is_waited_for_and_reported_not_sent_again(ledger_factory):
    location = ledger_factory()
    ledger = open_ledger(location)
    _record(ledger, "c1")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_then_write, args=(location, "c1", ready, 0.6))
    holder.start()
    assert ready.wait(30)
    assert not ledger.claim("a", "c1")  # another live process holds it
    start = time.monotonic()
    entry = asyncio.run(claim_write(ledger, "a", "c1", BODY, patience=30))
    holder.join(10)
    assert entry is not None and entry.state == State.WRITTEN  # reported, not written again
    assert time.monotonic() - start > 0.3  # it waited for the holder
    assert not ledger.claim("a", "c1")  # nothing left to write


def _claim_and_die(location: str, conv: str) -> None:
    assert open_ledger(location).claim("a", conv)
    os._exit(0)  # gone without releasing the claim


def test_a_write_claimed_by_a_dead_process_is_free_at_once(ledger_factory):
    location = ledger_factory()
    ledger = open_ledger(location)
    _record(ledger, "c1")
    ctx = multiprocessing.get_context("spawn")
    dead = ctx.Process(target=_claim_and_die, args=(location, "c1"))
    dead.start()
    dead.join(30)
    assert ledger.claim("a", "c1")  # not after lease_seconds (300 s): now
    assert asyncio.run(claim_write(ledger, "a", "c1", BODY, patience=1)) is None


def test_skipped_bodies_are_claimed_until_written(ledger_factory):
    ledger = open_ledger(ledger_factory())
    ledger.skip("a", "s1", FP, reason="no answer", body={"noAnswer": True})
    ledger.skip("a", "s2", FP, reason="no answer", body={})
    assert ledger.claim("a", "s1") and not ledger.claim("a", "s1")
    assert not ledger.claim("a", "s2")  # nothing to write
    ledger.written("a", "s1", {"noAnswer": True})
    assert not ledger.claim("a", "s1")


def test_queue_never_reopens_a_write_another_process_made(ledger_factory):
    ledger = open_ledger(ledger_factory())
    _record(ledger, "c1")
    assert ledger.claim("a", "c1")
    ledger.written("a", "c1", BODY)
    ledger.queue("a", "c1", BODY, "reused")  # a stale reader reusing the same enrichment
    assert ledger.get("a", "c1").state == State.WRITTEN
    ledger.queue("a", "c1", {"summary": "narrowed"}, "reused")  # another body: to be written
    assert ledger.get("a", "c1").state == State.PENDING


def test_a_lease_taken_just_after_its_holder_finished_finds_the_result(ledger_factory):
    """The race that paid twice: the other process stored its result and let go of the lease
    between this one's first look and its taking the lease."""
    ledger = open_ledger(ledger_factory())
    _record(ledger, "c1")  # stored by the other process, which released its lease

    async def stored():
        entry = await ledger.aget("a", "c1")
        return entry if entry is not None and entry.fingerprint == FP else None

    found = asyncio.run(acquire(ledger, "a", "c1", FP.key(), patience=5, stored=stored))
    assert found is not None and found.state == State.PENDING
    assert ledger.begin("a", "c1", FP.key(), 30)  # and the lease was let go again
