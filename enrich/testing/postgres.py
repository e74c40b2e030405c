"""A real, throwaway PostgreSQL server for tests and benchmarks: :class:`PostgresServer`.

It runs Debian's (or any) PostgreSQL binaries found under ``/usr/lib/postgresql/*/bin`` (or
named by ``$ENRICH_PG_BIN``): ``initdb`` in a temporary folder, a server on a free port of
127.0.0.1 (its Unix socket inside that folder too), trusting local connections for the user
``enrich``, and the database ``enrich``. Leaving the ``with`` block stops it and removes the
folder::

    with PostgresServer() as pg:
        ledger = open_ledger(pg.new_database())  # a fresh, empty database per test

Postgres refuses to run as root: as root, the folder is given to the ``postgres`` user and
the binaries run as it (``runuser``). By default the server trades durability for speed
(``fsync``, ``synchronous_commit`` and ``full_page_writes`` off), as a test wants;
``durable=True`` keeps Postgres's defaults, as a benchmark of a real set-up wants.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["PostgresServer", "find_pg_bin"]

_INSTALL = "apt-get install postgresql (Debian, Ubuntu), or set ENRICH_PG_BIN to its bin folder"


def find_pg_bin() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: ``$ENRICH_PG_BIN``, else the newest
    ``/usr/lib/postgresql/*/bin``, else ``initdb`` on ``PATH``."""
    named = os.environ.get("ENRICH_PG_BIN")
    candidates = [Path(named)] if named else []
    found = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in found),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise RuntimeError(
        f"PostgreSQL's server binaries (initdb, pg_ctl) are not installed: {_INSTALL}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server of its own, for the length of a ``with`` block (or between
    :meth:`start` and :meth:`stop`). ``url`` is its database ``enrich``; :meth:`new_database`
    makes another, empty, for each test."""

    def __init__(self, *, user: str = "enrich", database: str = "enrich", durable: bool = False):
        self.user = user
        self.database = database
        self.durable = durable
        self.port: int | None = None
        self.folder: Path | None = None
        self._names = itertools.count(1)
        self._as: list[str] = []

    @property
    def url(self) -> str:
        """The URL of the database ``enrich`` (no password: local connections are trusted)."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not running")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, *map(str, args)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> None:
        """initdb, then start the server and create the database ``enrich``."""
        bin_dir = find_pg_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="enrich-pg-"))
        atexit.register(self.stop)
        data, log = self.folder / "data", self.folder / "server.log"
        if os.geteuid() == 0:  # Postgres refuses root: its files and processes are postgres's
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root, PostgreSQL needs runuser to run as postgres")
            subprocess.run(["chown", "-R", "postgres:", str(self.folder)], check=True)
            self._as = ["runuser", "-u", "postgres", "--"]
        try:
            initdb = [bin_dir / "initdb", "-D", data, "-A", "trust", "-U", self.user]
            initdb += ["-E", "UTF8", "--locale=C"]
            if not self.durable:
                initdb.append("--no-sync")
            self._run(*initdb)
            settings = [
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.folder}",
                "-c max_connections=300",
            ]
            if not self.durable:
                settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
            for _ in range(5):  # a port taken between its choice and the server's start: another
                self.port = _free_port()
                started = self._run(
                    bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o",
                    " ".join([f"-p {self.port}", *settings]), "start",
                    check=False,
                )  # fmt: skip
                if started.returncode == 0:
                    break
            else:
                raise RuntimeError(
                    f"PostgreSQL did not start: {started.stderr.strip()}\n{self._log_tail()}"
                )
            self._admin(f'CREATE DATABASE "{self.database}"')
        except BaseException:
            self.stop()
            raise
        self._bin = bin_dir

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.folder / "server.log").read_text().splitlines()[-20:])  # type: ignore[operator]
        except OSError:
            return ""

    def _admin(self, sql: str) -> None:
        """Run one statement (outside any transaction) as the server's superuser."""
        import psycopg

        with psycopg.connect(self.url_of("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database (a copy of ``template1``); its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        try:  # copied file by file: faster than WAL-logged for a small template (PG 15+)
            self._admin(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        except psycopg.errors.SyntaxError:  # an older server: its only way
            self._admin(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (one :meth:`new_database` made), ending its sessions."""
        name = url.rpartition("/")[2]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once and remove its folder (nothing to keep: it is a test's)."""
        folder, self.folder = self.folder, None
        if folder is None:
            return
        atexit.unregister(self.stop)
        data = folder / "data"
        if (data / "postmaster.pid").exists():
            bin_dir = getattr(self, "_bin", None) or find_pg_bin()
            self._run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        self.port = None
        shutil.rmtree(folder, ignore_errors=True)

    def __repr__(self) -> str:
        state: Any = self.port if self.port is not None else "stopped"
        return f"{type(self).__name__}(port={state})"
