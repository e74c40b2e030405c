"""Result files: batch results as JSON Lines, CSV, or Parquet (when ``pyarrow`` is installed).

JSON Lines keeps everything (one :class:`~enrich.models.results.BatchResult` a line). CSV and
Parquet keep one flat row a conversation (:func:`columns`): what an analyst loads into a
spreadsheet or a warehouse; the enrichment's columns come from the analysis spec
(:meth:`~enrich.models.spec.AnalysisSpec.flat`). Rows are written as they come, so a long batch
streams.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError
from .models.results import BatchResult
from .models.spec import AnalysisSpec

__all__ = ["ResultWriter", "open_writer", "read_results", "flat_row", "columns", "COLUMNS"]

_DEFAULT_SPEC = AnalysisSpec()

#: Before the enrichment's columns. ``skip_reason``: why a ``skipped`` conversation had nothing
#: to analyse (empty for one skipped as already done).
HEAD = ["agent_id", "conversation_id", "line", "status", "error", "skip_reason"]
#: After them.
TAIL = [
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


def columns(spec: AnalysisSpec = _DEFAULT_SPEC) -> list[str]:
    """The columns of a flat result row for ``spec``."""
    return [*HEAD, *spec.columns(), *TAIL]


#: The columns of the default analysis.
COLUMNS = columns()


def flat_row(r: BatchResult, spec: AnalysisSpec = _DEFAULT_SPEC) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(columns(spec))
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
        row.update(spec.flat(res.enrichment))
        row.update(
            skip_reason=res.skipped,
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
    def __init__(self, stream: IO[str], spec: AnalysisSpec) -> None:
        self.stream = stream
        self.spec = spec
        self.writer = csv.DictWriter(stream, fieldnames=columns(spec))
        self.writer.writeheader()

    def write(self, result: BatchResult) -> None:
        self.writer.writerow(flat_row(result, self.spec))
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class _Parquet(ResultWriter):
    BATCH = 1000

    def __init__(self, path: Path, spec: AnalysisSpec) -> None:
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
        by_type = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}
        types.update({f.name: by_type[f.type] for f in spec.fields if f.type in by_type})
        self.spec = spec
        self.schema = pa.schema([(c, types.get(c, pa.string())) for c in columns(spec)])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.rows: list[dict[str, Any]] = []

    def write(self, result: BatchResult) -> None:
        self.rows.append(flat_row(result, self.spec))
        if len(self.rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


def open_writer(path: str | Path, spec: AnalysisSpec = _DEFAULT_SPEC) -> ResultWriter:
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
        return _Parquet(p, spec)
    try:
        stream = p.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write: {exc.strerror}") from None
    return _Csv(stream, spec) if suffix == ".csv" else _Jsonl(stream)


def read_results(path: str | Path, spec: AnalysisSpec = _DEFAULT_SPEC) -> list[dict[str, Any]]:
    """Flat rows back from a results file written by :func:`open_writer` (with ``spec``, the
    analysis whose columns it holds)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(flat_row(BatchResult.model_validate_json(line), spec))
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
