"""The CPU that the two HTTP requests of a conversation cost in the HTTP clients alone: the floor
under enrich's own CPU per conversation (bench/throughput.py).

A conversation is one chat completion through the ``openai`` SDK (over ``httpx2``) and one PUT
through ``httpx``. This sends the same requests as bench/throughput.py's workload, with nothing
of enrich around them: the bodies enrich builds for the same dialogues (the system prompt, the
transcript, the schema; the PUT body of an enrichment), to the same fake servers (another
process), answering in --latency, --concurrency at a time, each request on a client of its own
connection as enrich does. The CPU of this process per request, median of --runs runs.

    python bench/http_floor.py [--requests 2000] [--concurrency 64] [--latency 0.5] [--runs 3]

What is left of bench/throughput.py's figure once these are taken off is enrich's own work:
parsing, prompts, validation, the ledger, the event loop's tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dialogues, fakes, machine  # noqa: E402

from enrich import Enricher  # noqa: E402


class _Pool:
    """Clients of one connection each, the most recently used first (as enrich keeps them)."""

    def __init__(self, make) -> None:
        self.make, self.free, self.made = make, [], []

    def take(self):
        if self.free:
            return self.free.pop()
        self.made.append(self.make())
        return self.made[-1]

    def give(self, client) -> None:
        self.free.append(client)


async def _measure(f, bodies, update, args) -> tuple[float, float]:
    import httpx
    import openai

    tls = httpx.create_ssl_context()
    llm = _Pool(
        lambda: openai.AsyncOpenAI(
            base_url=f.llm,
            api_key="sk-bench",
            max_retries=0,
            timeout=60,
            http_client=openai.DefaultAsyncHttpxClient(),
        )
    )
    headers = {"Authorization": f.key, "Accept": "application/json", "User-Agent": "enrich"}
    chatdash = _Pool(
        lambda: httpx.AsyncClient(
            base_url=f.chatdash,
            headers=headers,
            verify=tls,
            timeout=60,
            limits=httpx.Limits(max_connections=1),
        )
    )
    turn = asyncio.Semaphore(args.concurrency)

    async def ask(i: int) -> None:
        async with turn:
            client = llm.take()
            await client.post(
                "/chat/completions",
                body=bodies[i % len(bodies)],
                cast_to=bytes,
                options={"headers": {"Accept-Encoding": "gzip, deflate"}},
            )
            llm.give(client)

    async def put(i: int) -> None:
        async with turn:
            client = chatdash.take()
            response = await client.put(f"/agents/agent-1/conversations/f{i:05d}", json=update)
            assert response.status_code == 200 and isinstance(response.json(), dict)
            chatdash.give(client)

    await asyncio.gather(*(ask(i) for i in range(args.concurrency)))  # connections, imports
    await asyncio.gather(*(put(i) for i in range(args.concurrency)))
    cpu = time.process_time()
    await asyncio.gather(*(ask(i) for i in range(args.requests)))
    llm_ms = (time.process_time() - cpu) / args.requests * 1000
    cpu = time.process_time()
    await asyncio.gather(*(put(i) for i in range(args.requests)))
    put_ms = (time.process_time() - cpu) / args.requests * 1000
    for client in llm.made:
        await client.close()
    for client in chatdash.made:
        await client.aclose()
    return llm_ms, put_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()

    print(f"machine: {machine()}")
    print(
        f"{args.requests} chat completions (openai SDK) and {args.requests} PUTs (httpx), "
        f"concurrency {args.concurrency}, LLM latency {args.latency}s"
    )
    texts = dialogues()
    llms, puts = [], []
    for run in range(args.runs):
        with fakes("--latency", str(args.latency)) as f:
            with Enricher(f.config(None)) as e:  # the bodies enrich sends, for these dialogues
                bodies = [
                    e.llm.request_body(e.render(text, format="text"), e.schema)
                    for text in texts[:200]
                ]
                update = e.enrich(texts[0], format="text").update
            llm_ms, put_ms = asyncio.run(_measure(f, bodies, update, args))
        llms.append(llm_ms)
        puts.append(put_ms)
        print(
            f"  run {run + 1}: chat completion {llm_ms:.2f} ms CPU, PUT {put_ms:.2f} ms CPU, "
            f"both {llm_ms + put_ms:.2f} ms"
        )
    llm_ms, put_ms = statistics.median(llms), statistics.median(puts)
    print(
        f"median: the HTTP clients' CPU per conversation {llm_ms + put_ms:.2f} ms "
        f"(chat completion {llm_ms:.2f} ms, PUT {put_ms:.2f} ms)"
    )


if __name__ == "__main__":
    main()
