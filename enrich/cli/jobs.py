"""Many conversations: ``enrich batch`` (from a file) and ``enrich backfill`` (from ChatDash).

Both are one job (see :mod:`._jobs`) fed from a different place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InputError
from ._common import guard
from ._jobs import JobOptions, job_command, run_job


@job_command
def batch(
    input: Annotated[
        str,
        typer.Argument(
            help='JSON Lines: {"agent_id", "conversation_id", "transcript"?} a line; - for stdin.'
        ),
    ],
    *,
    job: JobOptions,
) -> None:
    """Enrich many conversations from a JSON Lines file, at the provider's rate limit.

    Exit 0 when all succeeded, 5 when some failed (each is in the output and the summary),
    130 when interrupted (run the same command again to resume).
    """
    with guard(job.verbose):
        from ..engine.items import read_items

        if input != "-" and Path(input).is_dir():
            raise InputError(f"{input}: is a directory, not a JSON Lines file")
        if input != "-" and not Path(input).is_file():
            raise InputError(f"{input}: no such file")
        code = run_job(job, lambda enricher: read_items(input), total=lambda: _count_lines(input))
    raise typer.Exit(code)


@job_command
def backfill(
    agent_id: Annotated[str, typer.Option("--agent-id", "-a", help="ChatDash agent id.")],
    since: Annotated[str, typer.Option("--since", help="Start date (ISO 8601), inclusive.")],
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="End date (ISO 8601), exclusive; default now.", show_default=False
        ),
    ] = None,
    window_hours: Annotated[
        float, typer.Option("--window-hours", min=0.01, help="List the range in windows this long.")
    ] = 24.0,
    split_at: Annotated[
        int,
        typer.Option(
            "--split-at",
            min=1,
            help="A window listing this many conversations may be cut short: list it again "
            "in halves.",
        ),
    ] = 100,
    *,
    job: JobOptions,
) -> None:
    """Enrich every conversation of an agent in a date range (listed from ChatDash)."""
    with guard(job.verbose):
        from datetime import UTC, datetime, timedelta

        from ..engine.batch import backfill_items

        start = _when(since, "--since")
        end = _when(until, "--until") if until else datetime.now(UTC)
        if end <= start:
            raise InputError("--until must be after --since")
        window = timedelta(hours=window_hours)
        code = run_job(
            job,
            lambda enricher: backfill_items(
                enricher, agent_id, start, end, window, split_at=split_at
            ),
            lists=True,
        )
    raise typer.Exit(code)


def _count_lines(path: str) -> int | None:
    if path == "-":
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _when(value: str, flag: str) -> Any:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{flag} {value!r}: expected a date like 2026-11-01 or 2026-11-01T08:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
