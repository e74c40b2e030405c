"""`enrich serve` under a burst: Retell `call_analyzed` webhooks, signed as Retell signs them,
to a server process (`python -m enrich serve`) whose LLM answers in 2 s (the fakes run in a
third process).

1. Acceptance: a burst of --webhooks distinct calls, --clients deliveries at once; the latency of
   each answer as the platform sees it (p50, p99, max), then every call delivered a second time
   (duplicates) while the first are still being enriched. Then: conversations written, LLM
   calls and PUTs, against deliveries.
2. `kill -9` mid-burst: a fresh ledger, the same burst; the server is killed when half of it
   has been sent. Deliveries refused meanwhile are delivered again once it is back (as the
   platform retries); then: conversations written against webhooks accepted (2xx).

    python bench/serve.py [--webhooks 500] [--latency 2] [--concurrency 64] [--clients 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from _common import ROOT, dialogues, fakes, machine  # noqa: E402

from enrich.testing.webhooks import retell_headers  # noqa: E402

RETELL_KEY = "key_bench_retell_0000000000"
AGENT = "agent-bench"


def payloads(n: int, tag: str) -> list[tuple[str, bytes]]:
    """``n`` Retell call_analyzed webhooks, one per call, each with a dataset dialogue."""
    template = json.loads((ROOT / "tests/fixtures/formats/retell-call-analyzed.json").read_text())
    texts = dialogues()
    out = []
    for i in range(n):
        call = dict(template["call"])
        call["call_id"] = f"call_{tag}_{i:05d}"
        for key in ("transcript_object", "transcript_with_tool_calls"):
            call.pop(key, None)
        call["transcript"] = texts[i % len(texts)]
        body = json.dumps({"event": "call_analyzed", "call": call}, separators=(",", ":"))
        out.append((call["call_id"], body.encode()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict, concurrency: int) -> None:
        self.env, self.concurrency = env, concurrency
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["serve", "--port", str(self.port), "--concurrency", str(self.concurrency)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enrich", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("the server exited at start")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)

    def counts(self) -> dict:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if line.startswith("enrich_webhook_queue{"):
                state = line.split('state="', 1)[1].split('"', 1)[0]
                out[state] = int(float(line.rsplit(" ", 1)[1]))
        return out


async def _post(
    conn: list, port: int, path: str, body: bytes, headers: dict[str, str]
) -> int | None:
    """One HTTP/1.1 POST on a kept-alive connection (opened if ``conn`` holds none): a plain
    client, so that the driver's own CPU does not weigh on what is measured. The status, or
    None if the server refused or dropped the connection."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n{head}\r\n"
    ).encode() + body
    for attempt in (1, 2):  # a kept-alive connection the server closed: once more on a new one
        try:
            if not conn:
                conn.extend(await asyncio.open_connection("127.0.0.1", port))
            reader, writer = conn
            writer.write(request)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            length = 0
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            return int(status_line.split()[1])
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if conn:
                conn[1].close()
                conn.clear()
            if attempt == 2:
                return None
    return None


async def burst(
    url: str, items: list[tuple[str, bytes]], clients: int, on_sent=None
) -> list[tuple[str, int | None, float]]:
    """Deliver ``items``, ``clients`` at once: (call id, status or None if refused, seconds)."""
    port = int(url.rsplit(":", 1)[1])
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    results: list[tuple[str, int | None, float]] = []

    async def client() -> None:
        conn: list = []
        while not queue.empty():
            call_id, body = queue.get_nowait()
            headers = retell_headers(body, RETELL_KEY)  # signed when sent, as Retell does
            started = time.perf_counter()
            status = await _post(conn, port, f"/webhooks/retell/{AGENT}", body, headers)
            results.append((call_id, status, time.perf_counter() - started))
            if on_sent is not None:
                on_sent(len(results))
        if conn:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def wait_written(stats, want: int, timeout: float) -> float:
    started = time.monotonic()
    while stats()["put_conversations"] < want:
        if time.monotonic() - started > timeout:
            break
        time.sleep(0.25)
    return time.monotonic() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--webhooks", type=int, default=500)
    p.add_argument("--latency", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64, help="the server's --concurrency")
    p.add_argument("--clients", type=int, default=50, help="deliveries in flight at once")
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(
        f"{args.webhooks} Retell webhooks, LLM latency {args.latency:g}s, server --concurrency "
        f"{args.concurrency}, {args.clients} deliveries at once"
    )
    with (
        fakes("--latency", str(args.latency), "--import-delay", "0") as f,
        tempfile.TemporaryDirectory() as tmp,
    ):
        base = f.env(RETELL_API_KEY=RETELL_KEY, ENRICH_CONFIG="none")
        base.pop("VAPI_WEBHOOK_SECRET", None)
        base.pop("ELEVENLABS_WEBHOOK_SECRET", None)

        # 1. acceptance latency, then duplicates
        server = Server({**base, "ENRICH_LEDGER": os.path.join(tmp, "a.sqlite3")}, args.concurrency)
        server.start()
        items = payloads(args.webhooks, "a")
        first = asyncio.run(burst(server.url, items, args.clients))
        dupes = asyncio.run(burst(server.url, items, args.clients))
        took = wait_written(f.stats, args.webhooks, 600)
        time.sleep(1.0)
        stats, counts = f.stats(), server.counts()
        server.stop()
        lat = [s for _, status, s in first if status is not None]
        accepted = sum(1 for _, status, _ in first if status == 202)
        dup_ok = sum(1 for _, status, _ in dupes if status == 200)
        dlat = [s for _, status, s in dupes if status is not None]
        print(f"\n1. acceptance (LLM answering in {args.latency:g}s)")
        p50, p99 = statistics.median(lat) * 1000, pct(lat, 0.99) * 1000
        print(
            f"   burst of {len(first)}: accepted {accepted}, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(lat) * 1000:.1f} ms"
        )
        print(
            f"   the same {len(dupes)} again (duplicates): answered 'duplicate' {dup_ok}, "
            f"p50 {statistics.median(dlat) * 1000:.1f} ms, p99 {pct(dlat, 0.99) * 1000:.1f} ms"
        )
        print(
            f"   deliveries {len(first) + len(dupes)} for {args.webhooks} calls -> LLM calls "
            f"{stats['requests']}, PUTs {stats['puts']} to {stats['put_conversations']} "
            f"conversations; all written {took:.1f}s after the burst; queue {counts}"
        )

        # 2. kill -9 mid-burst (half delivered and being enriched, some written), restart
        server = Server({**base, "ENRICH_LEDGER": os.path.join(tmp, "b.sqlite3")}, args.concurrency)
        server.start()
        before = f.stats()
        items = payloads(args.webhooks, "b")
        half = len(items) // 2
        sent = asyncio.run(burst(server.url, items[:half], args.clients))
        wait_written(lambda: _delta(f.stats(), before), max(1, half // 10), 120)
        killed: dict = {}

        def on_sent(n: int) -> None:
            if n >= (len(items) - half) // 4 and not killed:
                killed["at"] = half + n
                killed["stats"] = _delta(f.stats(), before)
                os.kill(server.proc.pid, signal.SIGKILL)

        sent += asyncio.run(burst(server.url, items[half:], args.clients, on_sent))
        server.proc.wait()
        accepted_ids = {c for c, status, _ in sent if status in (200, 202)}
        refused = [(c, b) for c, b in items if c not in accepted_ids]
        server.start()  # the same port and ledger
        again = asyncio.run(burst(server.url, refused, args.clients))  # the platform retrying
        accepted_ids |= {c for c, status, _ in again if status in (200, 202)}
        took = wait_written(lambda: _delta(f.stats(), before), len(accepted_ids), 600)
        time.sleep(1.0)
        after, counts = _delta(f.stats(), before), server.counts()
        server.stop()
        at_kill = killed["stats"]
        print(f"\n2. kill -9 after {killed['at']} of {len(items)} deliveries, then a restart")
        print(
            f"   at the kill: {at_kill['put_conversations']} written, "
            f"{at_kill['requests'] - at_kill['put_conversations']} LLM calls in flight; accepted "
            f"(2xx) before it {sum(1 for _, s, _ in sent if s in (200, 202))}, refused while down "
            f"{len(refused)} (delivered again after the restart)"
        )
        print(
            f"   after the restart: written {after['put_conversations']} of {len(accepted_ids)} "
            f"accepted ({took:.1f}s); LLM calls {after['requests']}, PUTs {after['puts']}; "
            f"queue {counts}"
        )


def _delta(now: dict, before: dict) -> dict:
    return {k: now[k] - before.get(k, 0) for k in ("requests", "puts", "put_conversations")}


if __name__ == "__main__":
    main()
