"""enrich on Spark: a DataFrame of conversations in, a DataFrame of results out.

    from enrich.integrations.spark import enrich_dataframe

    results = enrich_dataframe(
        conversations,                  # agent_id, conversation_id and (optionally) transcript
        config="enrich.yaml",           # resolved on the driver, shipped to every task
        ledger="postgresql://enrich@ledger-db/enrich",   # one ledger for every executor
    )
    results.write.mode("append").saveAsTable("analytics.conversation_enrichments")

It runs as ``df.mapInPandas``: each task (one partition) builds one :class:`~enrich.Enricher`
from the configuration resolved on the driver, runs the partition's rows through it,
``concurrency`` at a time on its event loop, yields result rows as they complete, and closes it.
Every task of every executor uses the same ledger, so:

- a conversation is paid for once and written once whatever Spark does: a retried or
  speculative task, a DataFrame computed twice (``count()`` then ``write``), the same
  conversation in two partitions, a second job over the same rows (it pays nothing and writes
  nothing again: those rows are ``skipped``);
- ``llm.rpm`` and ``llm.tpm`` are one limit for the whole cluster: the ledger holds the
  schedule (:mod:`enrich.engine.pacing`), so no executor needs its share worked out.

The result columns (:func:`result_columns`, :func:`schema`) are those of ``enrich batch -o
results.parquet`` for the configuration's analysis (custom fields and named criteria of every
profile included, with the Parquet file's types), then ``error_type`` and ``stage``. Every input
row gives one result row: a row that cannot be enriched is a ``failed`` row with its error, never
a failed task, and a failed write keeps the paid-for enrichment in its row and in the ledger
(``enrich replay``, or the next job, writes it without paying again). Only a configuration or a
ledger that cannot work at all fails the job, before any call when the driver can tell.

pyspark (with pandas and pyarrow) is imported when a function here is called, not when this
module is imported; without it the error says ``pip install 'enrich[spark]'``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import warnings
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..config import Config, LedgerSettings, load_config
from ..engine import Enricher
from ..errors import ConfigError, validation_errors
from ..models.results import BatchResult
from ..models.spec import AnalysisSpec
from ..resultfiles import columns as row_columns
from ..resultfiles import flat_row

if TYPE_CHECKING:
    import pandas
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

__all__ = ["enrich_dataframe", "schema", "result_columns", "EXTRA_COLUMNS"]

#: After the columns of a results file: a failed row's error class and stage (``llm``,
#: ``chatdash``, ``input``...; see :class:`~enrich.BatchResult`).
EXTRA_COLUMNS = ("error_type", "stage")

#: Result rows per pandas frame handed back to Spark.
ROWS_PER_FRAME = 500

_INSTALL = "enrich on Spark needs pyspark, pandas and pyarrow: pip install 'enrich[spark]'"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")

# A results file's column types (as the Parquet writer has them); every other column is text.
_LONG = ("line", "dropped_queries", "prompt_tokens", "completion_tokens", "cached_tokens")
_TYPES = {
    **dict.fromkeys((*_LONG, "requests"), "long"),
    **dict.fromkeys(("cost", "seconds"), "double"),
    **dict.fromkeys(("is_success", "reused"), "boolean"),
}
_FIELD_TYPES = {"number": "double", "integer": "long", "boolean": "boolean"}


def _pyspark() -> tuple[Any, Any]:
    """``pyspark.sql.functions`` and ``pyspark.sql.types``, or a ConfigError naming the extra."""
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
        import pyspark.sql.functions as functions
        import pyspark.sql.types as types
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return functions, types


def _config(config: Config | str | os.PathLike[str] | None) -> Config:
    """A Config as given, or resolved now (on the driver) from a file, the environment and the
    defaults, as ``enrich`` resolves it (``None``: ``$ENRICH_CONFIG``, ``./enrich.yaml``...)."""
    if isinstance(config, Config):
        return config
    return load_config(None if config is None else os.fspath(config))


def result_columns(config: Config | str | os.PathLike[str] | None = None) -> list[str]:
    """The names of :func:`enrich_dataframe`'s columns, in order: a results file's for the
    configuration's analysis (:func:`enrich.resultfiles.columns`), then :data:`EXTRA_COLUMNS`."""
    return [*row_columns(_config(config).report_spec()), *EXTRA_COLUMNS]


def _column_types(spec: AnalysisSpec) -> dict[str, str]:
    return _TYPES | {f.name: _FIELD_TYPES[f.type] for f in spec.fields if f.type in _FIELD_TYPES}


def schema(config: Config | str | os.PathLike[str] | None = None) -> StructType:
    """The Spark schema of :func:`enrich_dataframe`'s result (every column nullable)."""
    _, T = _pyspark()
    cfg = _config(config)
    kinds = _column_types(cfg.report_spec())
    spark_type = {
        "long": T.LongType,
        "double": T.DoubleType,
        "boolean": T.BooleanType,
        "string": T.StringType,
    }
    return T.StructType(
        [T.StructField(c, spark_type[kinds.get(c, "string")](), True) for c in result_columns(cfg)]
    )


# -- the ledger every executor shares ----------------------------------------------------------


def _location(ledger: str | os.PathLike[str] | None, config: Config) -> str:
    """Where the shared ledger is: ``ledger``, else the configuration's ``ledger.path``
    (``ENRICH_LEDGER``). A file path is made absolute here, since an executor's working
    directory is not the driver's; a URL is kept as it is."""
    if ledger is None:
        if not config.ledger.enabled or config.ledger.path is None:
            raise ConfigError(
                "enrich on Spark needs a ledger that every executor shares: pass "
                "ledger='postgresql://...' (or a file path when every executor runs on this "
                "machine), or set ledger.path or ENRICH_LEDGER; without one a task that Spark "
                "retries would pay again, and the rate limit could not be shared"
            )
        ledger = config.ledger.path
    location = os.fspath(ledger)
    if _URL.match(location):
        return location
    return str(Path(location).expanduser().resolve())


def _with_ledger(config: Config, location: str) -> Config:
    settings = LedgerSettings.model_validate({"enabled": True, "path": location})
    url = _URL.match(location)
    if url and os.fspath(settings.path or "") != location:  # (never echo it: it holds secrets)
        raise ConfigError(f"ledger {url[1]}://...: ledger.path cannot hold a database URL")
    return config.model_copy(update={"ledger": settings})


def _ready(enricher: Enricher, *, write: bool, keys: bool) -> None:
    """A ConfigError unless ``enricher`` can work: its keys are there (``keys``), and its
    ledger opens (its schema made current; a point lookup, however big the ledger)."""
    if keys:
        enricher.llm.check()
        if write:
            enricher.chatdash.check()
    if enricher.ledger is not None:
        enricher.ledger.get("", "")


def _check(config: Config, *, write: bool, keys: bool) -> None:
    """What the driver can tell before any task starts: the analysis builds (prompts,
    profiles), the keys are there (when they travel with the tasks), the ledger opens."""
    enricher = Enricher(config)
    try:
        _ready(enricher, write=write, keys=keys)
    finally:
        _close(enricher)


def _master(df: Any) -> str | None:
    try:  # (Spark Connect has no SparkContext: then nothing is known)
        return str(df.sparkSession.sparkContext.master)
    except Exception:  # noqa: BLE001
        return None


# -- keys -------------------------------------------------------------------------------------

_KEYS = (("llm", "OPENAI_API_KEY"), ("chatdash", "CHATDASH_API_KEY"))


def _without_keys(config: Config) -> Config:
    update = {s: getattr(config, s).model_copy(update={"api_key": None}) for s, _ in _KEYS}
    return config.model_copy(update=update)


def _with_env_keys(config: Config) -> Config:
    """The executor's ``OPENAI_API_KEY`` and ``CHATDASH_API_KEY`` where ``config`` has none."""
    update = {}
    for section, var in _KEYS:
        settings, value = getattr(config, section), os.environ.get(var)
        if settings.api_key is None and value:
            try:
                update[section] = type(settings).model_validate(
                    {**dict(settings), "api_key": value}
                )
            except ValidationError as exc:
                raise ConfigError(f"{var} on the executor: {validation_errors(exc)[0]}") from None
    return config.model_copy(update=update) if update else config


# -- the driver ----------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def enrich_dataframe(
    df: DataFrame,
    config: Config | str | os.PathLike[str] | None = None,
    *,
    ledger: str | os.PathLike[str] | None = None,
    write: bool = True,
    agent_col: str = "agent_id",
    id_col: str = "conversation_id",
    transcript_col: str | None = "transcript",
    format: str | None = None,
    concurrency: int = 32,
    keys_from_env: bool = False,
) -> DataFrame:
    """Enrich every row of ``df`` (and, with ``write``, PUT the result to ChatDash); a lazy
    DataFrame of results, one row per input row, with :func:`schema`'s columns.

    ``config``: a :class:`~enrich.Config`, a YAML file's path, or ``None`` for the usual
    resolution (``$ENRICH_CONFIG``, ``./enrich.yaml``, the environment), done here on the
    driver and shipped to the tasks. ``ledger``: the ledger every executor shares, a database
    URL, or a file path when every executor runs on one machine (default: the configuration's
    ``ledger.path``, ``ENRICH_LEDGER``); required. ``write=False`` enriches and keeps the
    results in the ledger without writing (status ``enriched``).

    ``agent_col`` and ``id_col`` name the ids (cast to text); ``transcript_col`` the
    conversation (text or bytes in any format enrich reads, ``format`` to name it, or a
    struct/array column holding a platform's payload, sent as JSON): a null transcript, or
    ``transcript_col=None``, fetches the messages from ChatDash. Other columns are not carried:
    join the result back on ``agent_id`` and ``conversation_id``.

    ``concurrency``: the conversations each task runs at once; the cluster runs
    ``concurrency`` times the tasks running at once (partitions, bounded by executor cores),
    all paced together by ``llm.rpm``/``llm.tpm``. ``keys_from_env``: do not ship the API keys
    with the tasks; each executor reads ``OPENAI_API_KEY`` and ``CHATDASH_API_KEY`` from its
    own environment instead.

    The DataFrame is lazy and Spark may compute it more than once; the ledger makes that cost
    nothing (rows done before come back ``skipped``), but save or cache the result once.
    """
    F, T = _pyspark()
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    cfg = _config(config)
    fields = {f.name: f.dataType for f in df.schema.fields}
    wanted = [("agent_col", agent_col), ("id_col", id_col)]
    if transcript_col is not None:
        wanted.append(("transcript_col", transcript_col))
    for what, name in wanted:
        if name not in fields:
            hint = (
                " (transcript_col=None fetches every transcript)"
                if what == "transcript_col"
                else ""
            )
            have = ", ".join(list(fields)[:20]) + (", ..." if len(fields) > 20 else "")
            raise ConfigError(f"{what}: the DataFrame has no column {name!r}{hint}; it has: {have}")
    selected = [
        F.col(_quoted(agent_col)).cast("string").alias("agent_id"),
        F.col(_quoted(id_col)).cast("string").alias("conversation_id"),
    ]
    if transcript_col is not None:
        kind, column = fields[transcript_col], F.col(_quoted(transcript_col))
        if isinstance(kind, T.StructType | T.ArrayType | T.MapType):
            column = F.to_json(column)
        elif not isinstance(kind, T.StringType | T.BinaryType):
            raise ConfigError(
                f"transcript_col: column {transcript_col!r} is {kind.simpleString()}: expected "
                "text, bytes, or a struct or array (a platform's payload)"
            )
        selected.append(column.alias("transcript"))

    location = _location(ledger, cfg)
    cfg = _with_ledger(cfg, location)
    _check(cfg, write=write, keys=not keys_from_env)
    master = _master(df)
    if master is not None and not master.startswith("local") and not _URL.match(location):
        warnings.warn(
            f"the ledger {location} is a file: every executor must open the same file (one "
            "machine, or a shared disk that SQLite's locking works on); a cluster of several "
            "hosts needs a database URL",
            stacklevel=2,
        )

    job = _Job(
        config=_without_keys(cfg) if keys_from_env else cfg,
        columns=tuple(result_columns(cfg)),
        write=write,
        format=format,
        concurrency=concurrency,
        keys_from_env=keys_from_env,
        agent_col=agent_col,
        id_col=id_col,
    )
    return df.select(*selected).mapInPandas(partial(_enrich_partition, job), schema(cfg))


# -- the tasks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every task gets (pickled with the function)."""

    config: Config
    columns: tuple[str, ...]
    write: bool
    format: str | None
    concurrency: int
    keys_from_env: bool
    agent_col: str
    id_col: str


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing values


def _enrich_partition(job: _Job, frames: Iterator[pandas.DataFrame]) -> Iterator[pandas.DataFrame]:
    """One task: the partition's rows through one Enricher; result frames as they complete."""
    import pandas as pd

    config = _with_env_keys(job.config) if job.keys_from_env else job.config
    spec = config.report_spec()
    refused: deque[BatchResult] = deque()  # rows without ids: failed before the engine

    def frame(results: list[BatchResult]) -> pandas.DataFrame:
        rows = []
        for r in results:
            row = flat_row(r, spec)
            row.update(error_type=r.error_type, stage=r.stage)
            rows.append(row)
        return pd.DataFrame(
            {c: pd.Series([row.get(c) for row in rows], dtype=object) for c in job.columns}
        )

    enricher = Enricher(config)
    try:  # an executor without its keys, or that cannot reach the ledger: the task fails
        _ready(enricher, write=job.write, keys=True)
        run = enricher.enrich_many(
            _items(frames, job, refused), concurrency=job.concurrency, write=job.write
        )
    except BaseException:
        _close(enricher)
        raise
    done: list[BatchResult] = []
    try:
        for result in run:
            done.append(result)
            while refused:
                done.append(refused.popleft())
            if len(done) >= ROWS_PER_FRAME:
                yield frame(done)
                done = []
        done.extend(refused)
        if done:
            yield frame(done)
    except GeneratorExit:  # Spark stopped reading (a limit): those in flight finish, unread
        run.stop()
        for _ in run:
            pass
        raise
    except BaseException:
        run.cancel()
        raise
    finally:
        _close(enricher)


def _close(enricher: Enricher) -> None:
    enricher.close()
    if enricher.ledger is not None:
        enricher.ledger.close()  # this thread's connection (the loop's went with its thread)


async def _items(
    frames: Iterator[pandas.DataFrame], job: _Job, refused: deque[BatchResult]
) -> AsyncIterator[dict[str, Any]]:
    """The partition's rows as batch items, read from Spark off the event loop; a row without
    an id goes to ``refused`` as a failed result naming the column."""
    while True:
        frame = await asyncio.to_thread(next, frames, None)
        if frame is None:
            return
        transcripts = frame["transcript"] if "transcript" in frame else repeat(None)
        for agent, conversation, transcript in zip(
            frame["agent_id"], frame["conversation_id"], transcripts, strict=False
        ):
            agent = None if _missing(agent) or agent == "" else str(agent)
            conversation = (
                None if _missing(conversation) or conversation == "" else str(conversation)
            )
            if agent is None or conversation is None:
                column = job.agent_col if agent is None else job.id_col
                refused.append(
                    BatchResult(
                        agent_id=agent,
                        conversation_id=conversation,
                        status="failed",
                        ok=False,
                        error=f"no id: column {column!r} is null or empty",
                        error_type="InputError",
                        stage="input",
                    )
                )
                continue
            yield {
                "agent_id": agent,
                "conversation_id": conversation,
                "transcript": None if _missing(transcript) else transcript,
                "format": job.format,
            }
