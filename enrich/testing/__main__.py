"""``python -m enrich.testing``: try enrich without keys, against the fake servers.

It starts :class:`FakeLLM` and :class:`FakeChatDash` on 127.0.0.1, with one agent and a few
conversations in it, prints the environment to set in another shell and commands to try, then
shows every PUT the fake ChatDash receives until Ctrl-C (or SIGTERM). Nothing leaves the
machine, and the ledger it suggests is a temporary one, not yours.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .chatdash import FakeChatDash
from .llm import FakeLLM

AGENT = "demo-agent"
OPENAI_KEY = "sk-fake-not-a-real-key"
CHATDASH_KEY = "CD.fake0000000000000000000000000000"

#: The conversations the fake ChatDash holds: (id, created at, [(sender, text), ...]).
CONVERSATIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "demo-1",
        "2026-10-01T09:00:00Z",
        [
            ("bot", "Thanks for calling Acme Shoes, this is Ava. How can I help?"),
            ("user", "Hi, I was charged twice for my order and I'd like a refund."),
            ("bot", "I'm sorry about that. I've refunded the duplicate charge."),
            ("user", "Also, do you sell waterproof hiking boots in size 46?"),
            ("bot", "Our store hours are 9 to 5, Monday to Saturday."),
        ],
    ),
    (
        "demo-2",
        "2026-10-01T10:30:00Z",
        [
            ("bot", "Acme Shoes, how can I help?"),
            ("user", "Where is my order 5521? It was due yesterday."),
            ("bot", "It left our warehouse on Monday and arrives tomorrow."),
            ("user", "Great, thanks."),
        ],
    ),
    (
        "demo-3",
        "2026-10-01T15:45:00Z",
        [
            ("bot", "Acme Shoes, how can I help?"),
            ("user", "I'd like to exchange my sneakers for a bigger size."),
            ("agent", "This is Sam from the store: I've sent you a free return label."),
            ("user", "Perfect."),
        ],
    ),
]


def seed(chatdash: FakeChatDash) -> None:
    """Put the demo conversations in the fake ChatDash."""
    for conv, created, turns in CONVERSATIONS:
        chatdash.conversations[(AGENT, conv)] = {"createdAt": created}
        chatdash.messages[(AGENT, conv)] = [
            {"sender": sender, "type": "text", "content": {"text": text}, "createdAt": created}
            for sender, text in turns
        ]


def environment(llm: FakeLLM, chatdash: FakeChatDash, ledger: Path) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "CHATDASH_BASE_URL": chatdash.url,
        "CHATDASH_API_KEY": CHATDASH_KEY,
        "ENRICH_LEDGER": str(ledger),
    }


def _say(text: str = "") -> None:
    print(text, flush=True)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m enrich.testing",
        description="Fake OpenAI and ChatDash servers on 127.0.0.1, to try enrich without keys.",
    )
    parser.add_argument("--llm-port", type=int, default=0, help="default: any free port")
    parser.add_argument("--chatdash-port", type=int, default=0, help="default: any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per LLM answer")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    with (
        tempfile.TemporaryDirectory(prefix="enrich-try-") as tmp,
        FakeLLM(latency=args.latency, port=args.llm_port) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, port=args.chatdash_port) as chatdash,
    ):
        seed(chatdash)
        _say("Fake OpenAI and ChatDash servers are running on 127.0.0.1: no keys, no network.")
        _say("In another shell, set this environment (bash; the ledger is a temporary one):")
        _say()
        for name, value in environment(llm, chatdash, Path(tmp) / "ledger.sqlite3").items():
            _say(f"export {name}={value}")
        _say()
        _say("then try:")
        _say()
        _say(f"enrich run --agent-id {AGENT} --conversation-id demo-1")
        _say(
            f"enrich backfill --agent-id {AGENT} --since 2026-10-01 --until 2026-10-02 -o demo.csv"
        )
        _say("enrich report demo.csv")
        _say()
        _say("Every PUT the fake ChatDash receives is shown here. Ctrl-C stops.")
        seen = 0
        try:
            while True:
                puts = chatdash.puts
                for _method, path, _headers, body in puts[seen:]:
                    _say(f"PUT {path}")
                    _say(json.dumps(body, ensure_ascii=False, indent=2))
                seen = len(puts)
                time.sleep(0.1)
        except KeyboardInterrupt:
            _say(f"stopped: {len(llm.requests)} LLM request(s), {seen} PUT(s) received")
    return 0


if __name__ == "__main__":
    sys.exit(main())
