"""`enrich eval` end to end: a crafted labeled set, a fake LLM whose every answer is known (so
each figure is computed by hand below), two prompt variants side by side, the ledger's reuse,
the JSON and HTML outputs, and the --min gate's exit code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import OPENAI_KEY
from typer.testing import CliRunner

from enrich.cli import app
from enrich.testing import FakeLLM, Reply

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

PRICE_IN, PRICE_OUT = 0.15, 0.60  # gpt-4o-mini, USD per million tokens

CONFIG = """\
llm:
  max_retries: 0
  timeout: 5
analysis:
  taxonomy:
    - name: ride
      subtopics: [ride_book, ride_change]
    - name: hotel
      subtopics: [hotel_book, hotel_search]
  fields:
    - name: angry
      type: boolean
    - name: channel
      type: enum
      values: [phone, chat]
eval:
  labels:
    task: subtopic
    ok: is_success
  values:
    topic: {Rides: ride, Hotels: hotel}
"""


def _turns(item: str, *user: str) -> list[dict[str, str]]:
    turns = [{"role": "agent", "text": "Hello, how can I help?"}]
    for i, text in enumerate(user):
        turns.append({"role": "user", "text": f"This is item {item}. {text}" if i == 0 else text})
        turns.append({"role": "agent", "text": "Let me see."})
    return turns


#: The labeled set, under the set's own label names (domain, task, ok, ...).
ITEMS = [
    {
        "id": "i1",
        "turns": _turns("i1", "I want a ride to the airport."),
        "labels": {
            "domain": "Rides",
            "task": "ride_book",
            "ok": True,
            "summaries": ["the user booked a ride"],
            "misunderstood": [],
            "angry": False,
            "channel": "Phone",
        },
    },
    {
        "id": "i2",
        "turns": _turns("i2", "Change my ride please."),
        "labels": {
            "domain": "Rides",
            "task": "ride_change",
            "ok": False,
            "summaries": ["a dog barked", "the cat sat on the mat"],
            "angry": True,
        },
    },
    {
        "id": "i3",
        "turns": _turns("i3", "I need a hotel in Paris.", "Do you have rooms with a river view?"),
        "labels": {
            "domain": "Hotels",
            "task": "hotel_book",
            "ok": True,
            "misunderstood": [1],
            "angry": True,
        },
    },
    {
        "id": "i4",
        "turns": _turns("i4", "Find me a hotel."),
        "labels": {"domain": "Hotels", "task": "hotel_search", "ok": True},
    },
    {
        "id": "i5",
        "turns": _turns("i5", "Any hotel near the station?", "Can I bring my dog?"),
        "labels": {
            "domain": "Hotels",
            "task": "hotel_search",
            "ok": False,
            "misunderstood": ["can I bring my dog"],
        },
    },
    {
        "id": "i6",
        "turns": _turns("i6", "A ride, now."),
        "labels": {"domain": "Rides", "task": "ride_book", "ok": True, "summaries": ["a ride"]},
    },
]


def _answer(topic, subtopic, success, summary="A conversation.", queries=(), angry=False):
    return {
        "summary": summary,
        "topic": topic,
        "subtopic": subtopic,
        "misunderstood_queries": [{"question": q} for q in queries],
        "evaluation": {"reason": "As the transcript shows.", "is_success": success},
        "custom_analysis": {"angry": angry, "channel": "phone"},
    }


#: What the model answers for each item (variant A: the packaged prompts).
ANSWERS_A = {
    "i1": _answer(
        "ride",
        "ride_book",
        True,
        "The user booked a ride.",
        ["This is item i1. I want a ride to the airport."],
    ),
    "i2": _answer("ride", "ride_book", True, "the cat on the mat", angry=True),
    "i3": _answer(
        "hotel",
        "hotel_book",
        False,
        queries=["Do you have rooms with a river view?", "I need a hotel in Paris"],
    ),
    "i4": _answer("ride", "ride_change", True),
    "i5": _answer("hotel", "hotel_search", False),
}


def responder(request: dict[str, Any]) -> Reply:
    messages = request["messages"]
    item = re.search(r"This is item (i\d)", messages[1]["content"]).group(1)
    if item == "i6":
        return Reply.text("Sorry, I cannot produce JSON today.")  # invalid, every time
    if "VARIANT-B" in messages[0]["content"]:
        return Reply.json(_answer("hotel", "hotel_book", True))
    if item == "i5" and len(messages) == 2:
        return Reply.json(_answer("boats", "hotel_search", False))  # not in the taxonomy: re-ask
    if item == "i2":  # a fence and chatter after it: read after a repair, no re-ask
        return Reply.text("```json\n" + json.dumps(ANSWERS_A[item]) + "\n```\nHope this helps!")
    return Reply.json(ANSWERS_A[item])


@pytest.fixture
def setup(tmp_path, monkeypatch):
    with FakeLLM(responder=responder) as llm:
        for var in ("ENRICH_MODEL", "ENRICH_LLM_MODE", "ENRICH_PROMPTS_DIR"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
        monkeypatch.setenv("ENRICH_CONFIG", "none")
        monkeypatch.setenv("ENRICH_LEDGER", str(tmp_path / "ledger.sqlite3"))
        config = tmp_path / "eval.yaml"
        config.write_text(CONFIG)
        labeled = tmp_path / "labeled.jsonl"
        labeled.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
        b = tmp_path / "prompts-b"
        b.mkdir()
        (b / "system.j2").write_text("VARIANT-B\n" + (ROOT / "prompts/system.j2").read_text())
        yield {"llm": llm, "config": config, "labeled": labeled, "b": b, "tmp": tmp_path}


def run(s: dict, *args: str):
    return runner.invoke(
        app, ["eval", str(s["labeled"]), "-c", str(s["config"]), "--map", "domain=topic", *args]
    )


def run_json(s: dict, *args: str) -> dict[str, Any]:
    r = run(s, "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _value(report: dict, key: str, variant: int = 0) -> float:
    return report["variants"][variant]["figures"][key]["value"]


def test_every_figure_is_the_one_computed_by_hand(setup):
    report = run_json(setup)
    assert report["items"] == 6
    assert report["labels"] == {
        "angry": "angry",
        "channel": "channel",
        "domain": "topic",
        "misunderstood": "misunderstood",
        "ok": "is_success",
        "summaries": "summaries",
        "task": "subtopic",
    }
    (v,) = report["variants"]
    f = {k: fig["value"] for k, fig in v["figures"].items()}
    n = {k: fig["n"] for k, fig in v["figures"].items()}
    # topic: right for i1, i2, i3, i5; i4 answered ride for a hotel; i6 has no valid answer
    assert f["topic_accuracy"] == pytest.approx(4 / 6)
    # ride: tp 2, fp 1 (i4), fn 1 (i6): 4/6; hotel: tp 2, fn 1 (i4): 4/5
    assert f["topic_macro_f1"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert f["subtopic_accuracy"] == pytest.approx(3 / 6)
    # ride_book: tp 1, fp 1, fn 1: 1/2; ride_change: fp 1, fn 1: 0; hotel_book 1; hotel_search 2/3
    assert f["subtopic_macro_f1"] == pytest.approx((1 / 2 + 0 + 1 + 2 / 3) / 4)
    # success, i1..i6: labels T F T T F T, answers T T F T F (none): right for i1, i4, i5
    assert f["success_accuracy"] == pytest.approx(3 / 6)
    # chance: labels 4 T 2 F, answers 3 T 2 F 1 none: (4*3 + 2*2)/36 = 4/9; (1/2 - 4/9)/(5/9)
    assert f["success_kappa"] == pytest.approx(0.1)
    # ROUGE-L: i1 1.0 (stemmed), i2 10/11 (the best reference), i6 0 (no answer)
    assert f["summary_rouge_l"] == pytest.approx((1 + 10 / 11 + 0) / 3)
    assert n["summary_rouge_l"] == 3
    # i1 quotes a turn not labeled, i3 one of two right; labeled: i3's turn 1 (found), i5's
    assert f["misunderstood_precision"] == pytest.approx(1 / 3)
    assert f["misunderstood_recall"] == pytest.approx(1 / 2)
    assert (n["misunderstood_precision"], n["misunderstood_recall"]) == (2, 2)
    assert f["field_angry_accuracy"] == pytest.approx(2 / 3)  # i1 right, i2 right, i3 wrong
    assert f["field_channel_accuracy"] == 1.0  # "Phone" is "phone"
    for fig in v["figures"].values():  # every headline figure has its interval around it
        assert fig["low"] <= fig["value"] <= fig["high"]

    cm = v["confusions"]["topic"]
    assert cm["labels"] == ["hotel", "ride", "(no answer)"]
    assert cm["matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert v["per_topic"] == [
        {"topic": "hotel", "n": 3, "correct": 2},
        {"topic": "ride", "n": 3, "correct": 2},
    ]

    ops, llm = v["ops"], setup["llm"]
    # i6: 3 invalid answers (2 re-asks); i5: one re-ask; the rest one request each
    assert llm.count == 4 + 2 + 3
    assert (ops["answered"], ops["reused"], ops["invalid"], ops["failed"]) == (5, 0, 1, 0)
    assert ops["invalid_rate"] == pytest.approx(1 / 6)
    assert ops["reasked"] == 1 and ops["reask_rate"] == pytest.approx(1 / 5)
    assert ops["requests"] == 9
    prompt = sum(max(1, len(json.dumps(r["messages"])) // 4) for r in llm.requests)
    assert ops["prompt_tokens"] == prompt
    assert ops["cost"] == pytest.approx(
        (prompt * PRICE_IN + ops["completion_tokens"] * PRICE_OUT) / 1e6
    )
    assert ops["paid"] == pytest.approx(ops["cost"])
    assert ops["latency_median"] > 0 and ops["latency_p95"] >= ops["latency_median"]


def test_a_repaired_answer_is_counted(setup):
    """i2's answer came fenced and followed by chatter: accepted without a re-ask, counted."""
    report = run_json(setup)
    assert report["variants"][0]["ops"]["repairs"] == 1


def test_two_prompt_variants_side_by_side_and_the_ledger_pays_once(setup):
    args = ("--prompts-dir", "-", "--prompts-dir", str(setup["b"]), "--limit", "5")
    llm = setup["llm"]
    first = run_json(setup, *args)
    names = [v["name"] for v in first["variants"]]
    assert names == ["packaged prompts", "prompts-b"]
    assert _value(first, "topic_accuracy", 0) == pytest.approx(4 / 5)
    assert _value(first, "topic_accuracy", 1) == pytest.approx(3 / 5)  # always hotel
    paid = llm.count
    assert paid == 5 + 1 + 5  # i5's re-ask

    again = run_json(setup, *args)  # unchanged: every answer from the ledger
    assert llm.count == paid
    assert [v["ops"]["reused"] for v in again["variants"]] == [5, 5]
    assert [v["ops"]["paid"] for v in again["variants"]] == [0.0, 0.0]
    for a, b in zip(first["variants"], again["variants"], strict=True):
        assert a["figures"] == b["figures"]
        assert a["ops"]["cost"] == pytest.approx(b["ops"]["cost"])  # the ledger's record

    # variant B's template changes: only B is asked again
    (setup["b"] / "system.j2").write_text(
        "VARIANT-B, second try\n" + (ROOT / "prompts/system.j2").read_text()
    )
    third = run_json(setup, *args)
    assert llm.count == paid + 5
    assert [v["ops"]["answered"] for v in third["variants"]] == [0, 5]

    table = run(setup, *args)
    assert table.exit_code == 0
    header = next(line for line in table.stdout.splitlines() if "metric" in line)
    assert "packaged prompts" in header and "prompts-b" in header
    row = next(line for line in table.stdout.splitlines() if "topic accuracy" in line)
    assert re.search(r"0\.800 \[\d\.\d{3}, \d\.\d{3}\].*0\.600 \[\d\.\d{3}, \d\.\d{3}\]", row)


def test_sample_is_seeded(setup):
    one = run_json(setup, "--sample", "3", "--seed", "5")
    two = run_json(setup, "--sample", "3", "--seed", "5")
    assert one["items"] == two["items"] == 3
    assert one["variants"][0]["figures"] == two["variants"][0]["figures"]


def test_the_gate_exits_9_below_the_bar(setup):
    below = run(setup, "--min", "topic_accuracy=0.7", "--min", "success_kappa=0.05")
    assert below.exit_code == 9
    assert "below the bar: topic_accuracy is 0.667 for gpt-4o-mini, below 0.7" in below.stderr
    assert "success_kappa" not in below.stderr  # 0.1 is over 0.05
    assert "topic accuracy" in below.stdout  # the table is shown all the same
    assert run(setup, "--min", "topic_accuracy=0.6").exit_code == 0


def test_a_bad_gate_or_mapping_fails_before_any_call(setup):
    r = run(setup, "--min", "topic_acc=0.7")
    assert r.exit_code == 2 and "unknown figure 'topic_acc'" in r.stderr
    r = run(setup, "--min", "topic_accuracy=high")
    assert r.exit_code == 2 and "is not a number" in r.stderr
    r = run(setup, "--map", "mood=anger")
    assert r.exit_code == 2 and "mapped to 'anger'" in r.stderr
    r = run(setup, "--map", "mood")
    assert r.exit_code == 2 and "expected LABEL=WHAT" in r.stderr
    assert setup["llm"].count == 0


def test_a_bad_line_fails_before_any_call(setup):
    lines = setup["labeled"].read_text().splitlines()
    lines[3] = json.dumps({"id": "bad", "turns": ITEMS[0]["turns"], "labels": {"ok": "perhaps"}})
    setup["labeled"].write_text("\n".join(lines) + "\n")
    r = run(setup)
    assert r.exit_code == 2
    assert f"{setup['labeled']}, line 4: label 'ok' (is_success) must be true or false" in r.stderr
    assert setup["llm"].count == 0


def test_an_unreachable_server_is_an_llm_error_not_a_score(setup, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    r = run(setup, "--limit", "2")
    assert r.exit_code == 3 and "cannot reach the LLM" in r.stderr


def test_the_html_page_is_self_contained(setup):
    page = setup["tmp"] / "report.html"
    r = run(setup, "--html", str(page), "--prompts-dir", "-", "--prompts-dir", str(setup["b"]))
    assert r.exit_code == 0
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", html)  # nothing fetched
    assert "<script" not in html
    assert '<table class="headline">' in html and "topic accuracy" in html
    assert html.count('<table class="cm">') == 2 * 3  # topic, subtopic, success per variant
    assert html.count('class="bar"') >= 2 * 2  # per-topic bars, one per variant and topic


def test_text_from_the_labels_is_escaped_in_the_page(setup):
    lines = [json.loads(line) for line in setup["labeled"].read_text().splitlines()]
    lines[3]["labels"]["domain"] = "<script>alert(1)</script>"
    setup["labeled"].write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = setup["tmp"] / "report.html"
    assert run(setup, "--html", str(page)).exit_code == 0
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_examples_eval_set_ups_share_one_analysis():
    """examples/eval: star.yaml (any model) and star-gemma.yaml (the local model) ask the same."""
    import yaml

    star = yaml.safe_load((ROOT / "examples/eval/star.yaml").read_text())
    gemma = yaml.safe_load((ROOT / "examples/eval/star-gemma.yaml").read_text())
    assert gemma["analysis"] == star["analysis"]
    topics = {t["name"] for t in star["analysis"]["taxonomy"]}
    labeled = [
        json.loads(line) for line in (ROOT / "tests/fixtures/datasets/star/sample.jsonl").open()
    ]
    assert {x["labels"]["primary_domain"] for x in labeled} == topics  # every label answerable


def test_a_page_that_cannot_be_written_exits_6_after_the_table(setup):
    r = run(setup, "--limit", "1", "--html", str(setup["tmp"] / "no-such-dir" / "report.html"))
    assert r.exit_code == 6
    assert "topic accuracy" in r.stdout and "cannot write" in r.stderr
