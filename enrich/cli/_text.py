"""Text from outside (a transcript, the model's answers, a server's errors, a file name) shown
safely: never as rich markup (:func:`cell`), never with the control sequences that would drive
the terminal (:func:`plain`); and the rich console and tables every command prints with."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["plain", "plain_json", "cell", "console", "print_pairs", "spend_rows"]


#: Escape sequences (CSI, OSC, DCS and the other strings, two-byte ones), in their 7-bit and
#: 8-bit forms; a string left unterminated runs to the end of the line.
_SEQUENCE = (
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -~]?"
)
#: What :func:`plain` removes: escape sequences, every control character but the tab and the
#: line feed (carriage returns, backspaces and bells rewrite or ring the terminal), and the
#: bidirectional overrides and isolates (which reorder what is shown).
_CONTROLS = re.compile(f"{_SEQUENCE}|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
#: What :func:`out` removes: the escape sequences and C0 controls, which JSON never holds raw
#: (``json.dumps`` writes them as ``\\u001b``), so JSON output is left exact.
_C0 = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b[\]PX^_][^\x07\x1b\n]*(?:\x07|\x1b\\)?|\x1b[ -~]?"
    r"|[\x00-\x08\x0b-\x1f]"
)


def plain(text: Any) -> str:
    """``text`` without anything that drives a terminal: escape sequences, control characters
    (tab and line feed kept), bidirectional overrides. For every human-readable output; JSON and
    JSON Lines are left exact."""
    return _CONTROLS.sub("", str(text))


def plain_json(text: str) -> str:
    """``text`` without the escape sequences and C0 controls JSON never holds raw: for output
    that may be JSON, left exact."""
    return _C0.sub("", text)


def cell(text: Any) -> Any:
    """``text`` for a rich table or line: :func:`plain`, and never read as markup (a chat user's
    ``[/bold]`` is shown as typed)."""
    from rich.text import Text

    return Text(plain(text))


def console(**kwargs: Any) -> Any:
    """A rich console whose broken pipe (``| head``) ends the command as our own output does."""
    from rich.console import Console

    class _Quiet(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Quiet(**kwargs)


def print_pairs(title: str, rows: Any, **kwargs: Any) -> None:
    """A table of names and right-aligned values, on a :func:`console` made with ``kwargs``."""
    from rich.table import Table

    table = Table(title=cell(title), show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    for name, value in rows:
        table.add_row(cell(name), cell(value))
    console(**kwargs).print(table)


def spend_rows(t: Any) -> list[tuple[str, str]]:
    """The requests, tokens and cost of a batch's totals or of a report, as table rows."""
    unpriced = f" + {t.uncosted} unpriced" if t.uncosted else ""
    return [
        ("LLM requests", f"{t.requests:,}"),
        ("prompt tokens (cached)", f"{t.prompt_tokens:,} ({t.cached_tokens:,})"),
        ("completion tokens", f"{t.completion_tokens:,}"),
        ("cost (USD)", f"{t.cost:.4f}{unpriced}"),
    ]
