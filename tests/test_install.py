"""A non-editable install, as a user gets it from a wheel: the templates travel inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import TRANSCRIPT

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("enrich-*.whl")
    return path


def test_wheel_carries_the_templates(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("system.j2", "user.j2", "reask.j2", "map.j2", "reduce.j2"):
        assert f"enrich/_prompts/{template}" in names
    assert not any(n.startswith("prompts/") for n in names)  # inside the package, not beside it
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_finds_its_templates(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    for var in ("ENRICH_CONFIG", "ENRICH_PROMPTS_DIR"):
        env.pop(var, None)
    work = tmp_path / "elsewhere"  # not the source checkout
    work.mkdir()
    (work / "call.txt").write_text(TRANSCRIPT)

    def enrich(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "enrich", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import enrich; print(enrich.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target))  # the wheel's copy, not the checkout

    listed = enrich("templates", "list")
    assert listed.returncode == 0, listed.stderr
    assert str(target / "enrich" / "_prompts" / "system.j2") in listed.stdout

    rendered = enrich("render", "-t", "call.txt", "--json")
    assert rendered.returncode == 0, rendered.stderr
    assert "<transcript>" in json.loads(rendered.stdout)[1]["content"]
