"""The eval's HTML page as a browser draws it: real headless Chromium (Debian's ``chromium``,
which ``.ci/run`` installs) renders the page to a screenshot, and the bars must be there, in
each variant's colour, to scale."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib

import pytest

from enrich.evaluation import EvalReport, VariantScores, render_html
from enrich.evaluation.html import PALETTE
from enrich.evaluation.scores import Confusion, Figure, TopicBar

WIDTH, HEIGHT = 1000, 1400


def _chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.fail("no Chromium to render the page: apt-get install chromium (.ci/run does)")


def _rgb_rows(png: bytes) -> tuple[int, int, list[bytes]]:
    """The rows of an 8-bit RGB or RGBA PNG (not interlaced) as RGB bytes."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, header = 8, b"", None
    while at < len(png):
        (size,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + size]
        at += 12 + size
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
    width, height, depth, colour, _, _, interlace = header  # type: ignore[misc]
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rgb = bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3)
        rows.append(rgb)
    return width, height, rows


def _count(rows: list[bytes], hex_colour: str) -> int:
    """Pixels of exactly ``hex_colour`` (``#rrggbb``)."""
    pixel = bytes.fromhex(hex_colour.removeprefix("#"))
    total = 0
    for row in rows:
        start = row.find(pixel)
        while start != -1:
            if start % 3 == 0:
                total += 1
            start = row.find(pixel, start + 1)
    return total


def _variant(name: str, share: float) -> VariantScores:
    figures = {
        key: Figure(value=share, low=share / 2, high=share, n=6)
        for key in ("topic_accuracy", "subtopic_accuracy", "success_accuracy")
    }
    return VariantScores(
        name=name,
        model="fake-model",
        figures=figures,
        per_topic=[
            TopicBar(topic="ride", n=4, correct=round(4 * share)),
            TopicBar(topic="hotel", n=2, correct=round(2 * share)),
        ],
        confusions={"topic": Confusion(labels=["ride", "hotel"], matrix=[[3, 1], [0, 2]])},
    )


def test_chromium_draws_each_variants_bars_to_scale(tmp_path):
    report = EvalReport(
        source="labeled.jsonl",
        items=6,
        seed=0,
        rounds=1000,
        labels={"domain": "topic"},
        variants=[_variant("all right", 1.0), _variant("half right", 0.5)],
    )
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    width, height, rows = _rgb_rows(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)

    full, half = _count(rows, PALETTE[0]), _count(rows, PALETTE[1])
    # five bars each (three figures, two topics), 380 px at 1.0 by 14 px; legends' swatches
    assert full >= 5 * 380 * 14
    assert 0.45 < half / full < 0.55, (full, half)
    white = sum(row.count(b"\xff\xff\xff") for row in rows) / (width * height)
    assert 0.5 < white < 0.99  # a page, not a blank (nor a black) screen
