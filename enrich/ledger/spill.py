"""The spill file: paid results the ledger could not take, kept beside it until it can.

When the ledger cannot record a result the LLM was paid for (locked past its busy timeout, a full
disk, a corrupt page, a database server out of reach), the engine appends the result, one JSON
line (its ids, fingerprint, enrichment, body, usage, cost, state and when it was made), to
``<ledger>.spill.jsonl`` (for a database ledger, a file of the user's data directory named after
it: :func:`spill_path`), and syncs it to disk. The next run that opens the ledger, and ``enrich
replay``, import it (:func:`import_spill`): each line is recorded, then the file is removed, so
nothing is paid for twice.

Several processes may spill and import at once. An importer first renames the file to a name of
its own (only one rename wins; the name says which process holds it), then locks it, which
waits for a writer still appending to it; a writer that finds, once it holds its lock, that the
file was renamed under it appends to the new one. A renamed file whose importer died is taken
by the next import. A line is not recorded over a newer entry of the same conversation.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..models.fingerprint import Fingerprint
from ..models.usage import Usage
from .base import LedgerBackend, State
from .holder import holder_is_gone, this_holder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the rename alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["spill_path", "spill", "import_spill"]

log = logging.getLogger("enrich.ledger")

_SUFFIX = ".spill.jsonl"
_CLAIMED = ".importing"


def spill_path(ledger: LedgerBackend) -> Path:
    """The spill file of ``ledger``: beside a file, ``<ledger path>.spill.jsonl``; for a
    database (a ``location`` that is a URL, never with its password), a local file in the
    user's data directory named from a hash of that URL, ``spill-<hash>.spill.jsonl``: every
    process of this machine that shares the database finds the same one."""
    location = ledger.location
    if "://" not in location:
        return Path(location + _SUFFIX)
    from platformdirs import user_data_path

    name = hashlib.sha256(location.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return user_data_path("enrich", appauthor=False) / f"spill-{name}{_SUFFIX}"


@contextlib.contextmanager
def _locked(f: IO[Any]) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def spill(
    path: Path,
    agent_id: str,
    conversation_id: str,
    fingerprint: Fingerprint,
    *,
    enrichment: dict[str, Any],
    body: dict[str, Any],
    usage: Usage,
    cost: float | None,
    state: State,
) -> None:
    """Append one result the ledger could not take to the spill file ``path``, on disk when
    this returns (an ``OSError`` if it cannot be written either)."""
    line = json.dumps(
        {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "fingerprint": fingerprint.model_dump(mode="json"),
            "enrichment": enrichment,
            "body": body,
            "usage": usage.model_dump(mode="json"),
            "cost": cost,
            "state": State(state).value,
        },
        ensure_ascii=False,
    )
    _append(path, (line + "\n").encode("utf-8"))


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to the spill file ``path`` and sync it, under its lock; if an importer
    took the file meanwhile, to a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "ab") as f, _locked(f):
            try:
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:
                continue  # an importer took this file meanwhile: append to a new one
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            return


def _claimed_name(path: Path, holder: str) -> Path:
    return path.with_name(f"{path.name}.{holder.encode().hex()}-{uuid.uuid4().hex}{_CLAIMED}")


def _holder_of(claimed: Path, path: Path) -> str | None:
    middle = claimed.name[len(path.name) + 1 : -len(_CLAIMED)].rpartition("-")[0]
    try:
        return bytes.fromhex(middle).decode()
    except ValueError:
        return None


def _leftovers(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*{_CLAIMED}"))


def _claim(path: Path) -> list[Path]:
    """The spill files this process now holds: the spill file itself, and those taken by an
    importer that is gone. Each is renamed to a name of its own first: one rename wins."""
    holder = this_holder()
    claimed: list[Path] = []
    for candidate in [path, *_leftovers(path)]:
        if candidate != path and not holder_is_gone(_holder_of(candidate, path)):
            continue  # another live importer (or thread) is importing it
        target = _claimed_name(path, holder)
        try:
            os.rename(candidate, target)
        except FileNotFoundError:
            continue  # another process took it first
        claimed.append(target)
    return claimed


def import_spill(ledger: LedgerBackend) -> int:
    """Record every result of ``ledger``'s spill file in it, then remove the file; how many
    were recorded. If the ledger fails meanwhile (a :class:`~enrich.errors.LedgerError`), what
    is not yet recorded goes back to the spill file for the next import, and the error is
    raised."""
    path = spill_path(ledger)
    if not path.exists() and not _leftovers(path):
        return 0
    imported = 0
    for claimed in _claim(path):
        with open(claimed, "rb") as f, _locked(f):  # a writer still appending finishes first
            lines = f.read().decode("utf-8", "replace").splitlines(keepends=True)
        for i, line in enumerate(lines):
            try:
                imported += _import_line(ledger, path, i + 1, line)
            except BaseException:
                _append(path, "".join(lines[i:]).encode("utf-8"))
                claimed.unlink()
                raise
        claimed.unlink()
    return imported


def _import_line(ledger: LedgerBackend, path: Path, number: int, line: str) -> int:
    """Record one line of the spill file: 1 if it was recorded, 0 if not (cut short by a
    crash, or older than the ledger's entry)."""
    if not line.strip():
        return 0
    try:
        record = json.loads(line)
        fingerprint = Fingerprint.model_validate(record["fingerprint"])
        usage = Usage.model_validate(record["usage"])
        state = State(record["state"])
        agent_id, conversation_id = record["agent_id"], record["conversation_id"]
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: line %d of the spill file cannot be read: %s", path, number, exc)
        return 0
    entry = ledger.get(agent_id, conversation_id)
    if entry is not None and entry.updated_at > record["at"]:
        return 0  # a newer result was recorded since
    ledger.record(
        agent_id,
        conversation_id,
        fingerprint,
        enrichment=record["enrichment"],
        body=record["body"],
        usage=usage,
        cost=record["cost"],
        state=state,
    )
    ledger.note(agent_id, conversation_id, "imported", {"from": str(path)})
    return 1
