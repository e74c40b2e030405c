"""Result files: batch results as JSON Lines, CSV, or Parquet (when ``pyarrow`` is installed).

JSON Lines keeps everything (one :class:`~enrich.models.results.BatchResult` a line). CSV and
Parquet keep one flat row a conversation (:func:`columns`): what an analyst loads into a
spreadsheet or a warehouse; the enrichment's columns come from the analysis spec
(:meth:`~enrich.models.spec.AnalysisSpec.flat`). Rows are written as they come, so a long batch
streams.

Costs are written rounded to :data:`COST_DIGITS` decimals (a hundred-millionth of a dollar): the
float noise of a price times a count (``0.00016664999999999998``) stays in the ledger. In CSV, a
text cell that a spreadsheet would run as a formula (one starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) is written after an apostrophe, as OWASP recommends
(:func:`neutralise`); ``formulas=True`` writes cells as they are, and :func:`read_results` takes
the apostrophe off again. A file that cannot be written raises :class:`ResultFileError`.
"""

from __future__ import annotations

import csv
import errno
import sys
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError
from .models.fields import ROW_HEAD, ROW_TAIL
from .models.results import BatchResult
from .models.spec import AnalysisSpec

__all__ = [
    "ResultWriter",
    "ResultFileError",
    "open_writer",
    "read_results",
    "flat_row",
    "columns",
    "neutralise",
    "round_cost",
    "rounded_costs",
    "COLUMNS",
    "COST_DIGITS",
]

#: The decimals of a cost in a results file: 1e-8 USD.
COST_DIGITS = 8
#: What starts a formula in a spreadsheet (OWASP's list, and the full-width forms some read).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class ResultFileError(OSError):
    """A results file could not be written (a full disk, a read-only folder...). An ``OSError``
    with the ``errno`` and ``filename`` of the failure; its message says what happened."""

    def __init__(self, path: Any, exc: OSError) -> None:
        what = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(exc.errno or errno.EIO, what, str(path))
        self.path = str(path)
        #: where the results that could not be written are kept, when the caller knows
        self.kept: str | None = None

    def __str__(self) -> str:
        kept = f"; {self.kept}" if self.kept else ""
        return f"{self.path}: cannot write the results: {self.strerror}{kept}"


def round_cost(cost: float | None) -> float | None:
    """A cost as results files show it: to :data:`COST_DIGITS` decimals."""
    return None if cost is None else round(cost, COST_DIGITS)


def rounded_costs(data: dict[str, Any]) -> dict[str, Any]:
    """A result's JSON (``model_dump(mode="json")``) with its ``cost`` as outputs show it
    (:func:`round_cost`); the ledger keeps it as computed."""
    if isinstance(data.get("cost"), float):
        data = {**data, "cost": round_cost(data["cost"])}
    return data


def neutralise(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading
    apostrophe (``=HYPERLINK(...)`` is written ``'=HYPERLINK(...)``); anything else is as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _restore(value: str) -> str:
    """What :func:`neutralise` made of a cell, back."""
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


_DEFAULT_SPEC = AnalysisSpec()

#: Before the enrichment's columns, and after them (``enrich.models.fields``, where the names
#: a custom field cannot take are derived from them).
HEAD, TAIL = list(ROW_HEAD), list(ROW_TAIL)


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
            cost=round_cost(res.cost),
            reused=res.reused,
        )
    return row


def _rounded(result: BatchResult) -> BatchResult:
    """``result`` with its cost as results files show it (:func:`round_cost`)."""
    res = result.result
    if res is None or res.cost is None or res.cost == round_cost(res.cost):
        return result
    return result.model_copy(
        update={"result": res.model_copy(update={"cost": round_cost(res.cost)})}
    )


class ResultWriter:
    """Writes results as they come; :meth:`write` and :meth:`close` raise
    :class:`ResultFileError` when the file cannot take them."""

    path: Any = "-"

    def write(self, result: BatchResult) -> None:
        try:
            self._write(result)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise ResultFileError(self.path, exc) from exc

    def close(self) -> None:
        try:
            self._close()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise ResultFileError(self.path, exc) from exc

    def _write(self, result: BatchResult) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class _Jsonl(ResultWriter):
    def __init__(self, stream: IO[str], path: Any = "-") -> None:
        self.stream = stream
        self.path = path

    def _write(self, result: BatchResult) -> None:
        self.stream.write(_rounded(result).model_dump_json() + "\n")
        self.stream.flush()

    def _close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class _Csv(ResultWriter):
    def __init__(
        self, stream: IO[str], spec: AnalysisSpec, path: Any, *, formulas: bool = False
    ) -> None:
        self.stream = stream
        self.spec = spec
        self.path = path
        self.cell = (lambda value: value) if formulas else neutralise
        self.writer = csv.DictWriter(stream, fieldnames=columns(spec))
        try:
            self.writer.writeheader()
        except OSError as exc:
            raise ResultFileError(path, exc) from exc

    def _write(self, result: BatchResult) -> None:
        row = flat_row(result, self.spec)
        self.writer.writerow({k: self.cell(v) for k, v in row.items()})
        self.stream.flush()

    def _close(self) -> None:
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
        self.path = path
        self.schema = pa.schema([(c, types.get(c, pa.string())) for c in columns(spec)])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.rows: list[dict[str, Any]] = []

    def _write(self, result: BatchResult) -> None:
        self.rows.append(flat_row(result, self.spec))
        if len(self.rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _close(self) -> None:
        self._flush()
        self.writer.close()


def open_writer(
    path: str | Path, spec: AnalysisSpec = _DEFAULT_SPEC, *, formulas: bool = False
) -> ResultWriter:
    """A writer for ``path`` by its extension: ``.jsonl``, ``.csv`` or ``.parquet``; ``-`` writes
    JSON Lines to standard output. ``formulas``: write CSV cells as they are, even those a
    spreadsheet would run as formulas (by default they are :func:`neutralise` d)."""
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
        try:
            return _Parquet(p, spec)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot write: {exc.strerror or exc}") from None
    try:
        stream = p.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write: {exc.strerror}") from None
    if suffix == ".csv":
        return _Csv(stream, spec, p, formulas=formulas)
    return _Jsonl(stream, p)


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
            rows = [
                {k: _restore(v) if isinstance(v, str) else v for k, v in r.items()}
                for r in csv.DictReader(f)
            ]
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
