"""Writing batch results: JSON Lines, CSV, or Parquet (when ``pyarrow`` is installed).

JSON Lines keeps everything (one :class:`~enrich.batch.BatchResult` a line). CSV and Parquet
keep one flat row a conversation (:data:`COLUMNS`): what an analyst loads into a spreadsheet
or a warehouse. Rows are written as they come, so a long batch streams.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .batch import BatchResult

__all__ = ["ResultWriter", "open_writer", "flat_row", "COLUMNS"]

COLUMNS = [
    "agent_id",
    "conversation_id",
    "line",
    "status",
    "error",
    "topic",
    "subtopic",
    "is_success",
    "reason",
    "summary",
    "misunderstood_queries",
    "dropped_queries",
    "model",
    "strategy",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "requests",
    "cost",
    "reused",
    "seconds",
]


def flat_row(r: BatchResult) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        agent_id=r.agent_id,
        conversation_id=r.conversation_id,
        line=r.line,
        status=r.status,
        error=r.error,
        seconds=round(r.seconds, 3),
    )
    res = r.result
    if res is not None:
        e = res.enrichment
        row.update(
            topic=e.topic,
            subtopic=e.subtopic,
            is_success=e.evaluation.is_success,
            reason=e.evaluation.reason,
            summary=e.summary,
            misunderstood_queries=" | ".join(q.question for q in e.misunderstood_queries),
            dropped_queries=len(res.dropped_queries),
            model=res.model,
            strategy=res.strategy,
            prompt_tokens=res.usage.prompt_tokens,
            completion_tokens=res.usage.completion_tokens,
            cached_tokens=res.usage.cached_tokens,
            requests=res.usage.requests,
            cost=res.cost,
            reused=res.reused,
        )
    return row


class ResultWriter:
    def write(self, result: BatchResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Jsonl(ResultWriter):
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, result: BatchResult) -> None:
        self.stream.write(result.model_dump_json() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class _Csv(ResultWriter):
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        self.writer.writeheader()

    def write(self, result: BatchResult) -> None:
        self.writer.writerow(flat_row(result))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class _Parquet(ResultWriter):
    BATCH = 1000

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        types = {
            "line": pa.int64(),
            "is_success": pa.bool_(),
            "dropped_queries": pa.int64(),
            "prompt_tokens": pa.int64(),
            "completion_tokens": pa.int64(),
            "cached_tokens": pa.int64(),
            "requests": pa.int64(),
            "cost": pa.float64(),
            "reused": pa.bool_(),
            "seconds": pa.float64(),
        }
        self.schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.rows: list[dict[str, Any]] = []

    def write(self, result: BatchResult) -> None:
        self.rows.append(flat_row(result))
        if len(self.rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


def open_writer(path: str | Path) -> ResultWriter:
    """A writer for ``path`` by its extension: ``.jsonl``, ``.csv`` or ``.parquet``; ``-`` writes
    JSON Lines to standard output."""
    if str(path) == "-":
        return _Jsonl(sys.stdout)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        raise ConfigError(f"{p}: --output must end in .jsonl, .csv or .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(f"{p}: writing Parquet needs pyarrow (pip install pyarrow)") from None
        return _Parquet(p)
    try:
        stream = p.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write: {exc.strerror}") from None
    return _Csv(stream) if suffix == ".csv" else _Jsonl(stream)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Flat rows back from a results file written by :func:`open_writer`."""
    from .batch import BatchResult

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(flat_row(BatchResult.model_validate_json(line)))
                    except ValueError as exc:
                        raise ConfigError(f"{p}: line {n} is not a batch result ({exc})") from None
        return rows
    if suffix == ".csv":
        with p.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            for key in ("is_success", "reused"):
                row[key] = {"True": True, "False": False}.get(row.get(key) or "")
            for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "requests"):
                row[key] = int(row[key]) if row.get(key) else 0
            row["cost"] = float(row["cost"]) if row.get("cost") else None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(p)).to_pylist()
    raise ConfigError(f"{p}: a results file ends in .jsonl, .csv or .parquet")
