"""Shared by the benchmarks: fakes in a separate process, machine facts, dataset dialogues."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT / "tests" / "fixtures" / "datasets"


class Fakes:
    def __init__(self, proc: subprocess.Popen, urls: dict) -> None:
        self.proc = proc
        self.llm = urls["llm"]
        self.chatdash = urls["chatdash"]
        self.key = urls["key"]

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def config(self, ledger: str | None, **llm: object):
        """A configuration aimed at these fakes; ``ledger`` is a path, or None for none."""
        from enrich.config import load_config

        return load_config(
            None,
            {
                "llm": {"base_url": self.llm, "api_key": "sk-bench", **llm},
                "chatdash": {"base_url": self.chatdash, "api_key": self.key},
                "ledger": {"enabled": ledger is not None, "path": ledger},
            },
            environ={},
        )

    def env(self, **extra: str) -> dict:
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": self.llm,
            "CHATDASH_API_KEY": self.key,
            "CHATDASH_BASE_URL": self.chatdash,
        }
        env.pop("ENRICH_CONFIG", None)
        env.update(extra)
        return env


@contextmanager
def fakes(*args: str):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fakes.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield Fakes(proc, json.loads(proc.stdout.readline()))
    finally:
        proc.stdin.close()
        proc.wait(10)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def dialogues() -> list[str]:
    """The 600 labeled dialogues, as text transcripts."""
    out = []
    for path in sorted(DATASETS.glob("*/sample.jsonl")):
        for line in path.read_text().splitlines():
            turns = json.loads(line)["turns"]
            out.append(
                "\n".join(
                    f"{'User' if t['role'] == 'user' else 'Agent'}: {' '.join(t['text'].split())}"
                    for t in turns
                    if t["text"].strip()
                )
            )
    return out
