"""The CLI's layout: a root that only registers, one module per group, one job for two commands."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

import enrich.cli
from enrich.cli import app, exit_code_for
from enrich.errors import (
    ChatDashError,
    ChatDashLookupError,
    ConfigError,
    EnrichError,
    InputError,
    LLMValidationError,
    TemplateError,
    TranscriptError,
)

CLI = Path(enrich.cli.__file__).parent


def _group() -> Any:
    """The click group typer builds (typer may bring its own click: no isinstance here)."""
    return typer.main.get_command(app)


def test_the_root_only_builds_the_app_and_registers_the_groups():
    source = (CLI / "__init__.py").read_text()
    assert len(source.splitlines()) <= 80
    tree = ast.parse(source)
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert functions == ["main"]


def test_no_module_of_the_cli_is_long():
    for path in CLI.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_every_command_keeps_its_name_and_its_place_in_help():
    group = _group()
    assert list(group.commands) == [
        "run",
        "replay",
        "show",
        "batch",
        "backfill",
        "report",
        "eval",
        "serve",
        "render",
        "schema",
        "config",
        "formats",
        "presets",
        "templates",
        "ledger",
    ]
    assert list(group.commands["ledger"].commands) == ["stats"]
    assert list(group.commands["templates"].commands) == ["list", "show", "copy"]


def test_batch_and_backfill_share_their_job_options():
    group = _group()

    def options(name: str) -> list[tuple[tuple[str, ...], str | None]]:
        params = group.commands[name].params
        return [(tuple(p.opts), p.help) for p in params if p.param_type_name == "option"]

    batch, backfill = options("batch"), options("backfill")
    assert [o for o, _ in batch][:3] == [("--concurrency", "-j"), ("--rpm",), ("--tpm",)]
    assert backfill[-len(batch) :] == batch  # the same options, help and order, after its own
    assert [o for o, _ in backfill[: -len(batch)]] == [
        ("--agent-id", "-a"),
        ("--since",),
        ("--until",),
        ("--window-hours",),
        ("--split-at",),
    ]


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InputError("x"), 2),
        (TranscriptError("x"), 2),
        (ConfigError("x"), 2),
        (TemplateError("x"), 2),
        (ChatDashLookupError("x"), 2),
        (LLMValidationError("x"), 3),
        (ChatDashError("x"), 4),
        (EnrichError("x"), 1),
        (RuntimeError("x"), 1),
    ],
)
def test_exit_codes_are_a_table_over_the_error_class(exc, code):
    assert exit_code_for(exc) == code


def test_the_exit_codes_stay_importable_from_the_root():
    from enrich.cli import (  # noqa: F401
        EXIT_BUG,
        EXIT_INPUT,
        EXIT_INTERRUPTED,
        EXIT_LLM,
        EXIT_OK,
        EXIT_PARTIAL,
        EXIT_WRITE,
        main,
    )

    assert (EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_LLM, EXIT_WRITE) == (0, 1, 2, 3, 4)
    assert (EXIT_PARTIAL, EXIT_INTERRUPTED) == (5, 130)


def test_starting_the_cli_loads_no_application_code():
    code = "import sys, enrich.cli; print('enrich.report' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "False"  # `enrich report` imports it when it runs
