"""The eval's figures, each against values computed by hand on small crafted sets; the labeled
set's reading and its label mapping (the shared datasets' own names included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enrich.errors import InputError
from enrich.evaluation import KNOWN_LABELS, LabelMap, read_lines, to_item
from enrich.evaluation.metrics import (
    NO_ANSWER,
    accuracy,
    bootstrap,
    cohen_kappa,
    confusion,
    macro_f1,
    match_queries,
    precision_recall,
    rouge_l,
)

DATASETS = Path(__file__).parent / "fixtures" / "datasets"

# label, answer (None: no valid answer)
NAMES = [("a", "a"), ("a", "b"), ("b", "b"), ("c", None)]


def test_accuracy_counts_a_missing_answer_as_wrong():
    assert accuracy(NAMES) == 2 / 4
    assert accuracy([]) is None


def test_macro_f1_by_hand():
    # a: tp 1, fp 0, fn 1 -> 2/3; b: tp 1, fp 1, fn 0 -> 2/3; c: tp 0, fn 1 -> 0
    assert macro_f1(NAMES) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # a class only ever answered (d) is a class too, with F1 0: a: 2/3, d: 0
    assert macro_f1([("a", "a"), ("a", "d")]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1([]) is None


def test_confusion_rows_are_labels_columns_answers():
    labels, matrix = confusion(NAMES + [("a", "z")])
    assert labels == ["a", "b", "c", "z", NO_ANSWER]  # labels by frequency, then answers
    assert matrix == [
        [1, 1, 0, 1, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]


def test_cohen_kappa_by_hand():
    gold = [True, True, True, False, False]
    got = [True, True, False, False, True]
    # observed 3/5; chance (3*3 + 2*2)/25 = 13/25; kappa = (0.6 - 0.52) / 0.48 = 1/6
    assert cohen_kappa(list(zip(gold, got, strict=True))) == pytest.approx(1 / 6)
    # a missing answer is its own category: observed 1/2, chance (1*1 + 1*0)/4 = 1/4
    assert cohen_kappa([(True, True), (False, None)]) == pytest.approx((0.5 - 0.25) / 0.75)
    assert cohen_kappa([(True, True), (True, True)]) is None  # chance agreement is certain
    assert cohen_kappa([(True, False), (False, True)]) == pytest.approx(-1.0)
    assert cohen_kappa([]) is None


def test_rouge_l_against_the_best_reference():
    # LCS of "the cat on the mat" in "the cat sat on the mat": 5 words; P 5/5, R 5/6: F 10/11
    assert rouge_l("the cat on the mat", ["a dog barked", "the cat sat on the mat"]) == (
        pytest.approx(10 / 11)
    )
    assert rouge_l("The user BOOKED a ride.", ["the user books a ride"]) == pytest.approx(1.0)
    assert rouge_l(None, ["anything"]) == 0.0


def test_misunderstood_queries_are_matched_like_the_grounding_step():
    turns = ["Also, do you sell waterproof hiking boots in size 46?", "Can I get a refund?"]
    answered = [
        "do you sell waterproof hiking boot in size 46",  # small wording changes: grounded
        "Can I get a refund",
        "what are your opening hours",  # in no labeled turn
    ]
    assert match_queries(answered, turns) == (2, 2)
    assert match_queries(answered[2:], turns) == (0, 0)
    # a short label inside a longer quote counts too (matched the other way round)
    assert match_queries(
        ["well, can I get a refund please, I was charged twice"], ["a refund"]
    ) == (
        1,
        1,
    )
    # two quotes of one turn: both precise, the turn found once
    assert match_queries(["Can I get a refund?", "get a refund"], turns) == (2, 1)


def test_precision_and_recall_are_micro_averaged():
    # (answered, matching, labeled, found) per item
    counts = [(2, 1, 1, 1), (0, 0, 2, 0), (1, 0, 0, 0)]
    assert precision_recall(counts) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert precision_recall([(0, 0, 0, 0)]) == (None, None)


def test_bootstrap_is_seeded_and_brackets_the_figure():
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    units = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    low, high = bootstrap(units, mean, seed=7)
    assert bootstrap(units, mean, seed=7) == (low, high)  # the same seed, the same interval
    assert bootstrap(units, mean, seed=8) != (low, high)
    assert 0.0 <= low < mean(units) < high <= 1.0
    # two items, one right: resample means 0, 1/2, 1 with chances 1/4, 1/2, 1/4
    assert bootstrap([1.0, 0.0], mean, seed=0) == (0.0, 1.0)
    assert bootstrap([1.0, 1.0, 1.0], mean, seed=0) == (1.0, 1.0)
    assert bootstrap([], mean, seed=0) == (None, None)
    assert bootstrap([1.0], lambda xs: None, seed=0) == (None, None)


# -- the labeled set and its mapping -------------------------------------------------------------


def _item(labels: dict, mapping: LabelMap | None = None, **line):
    obj = {"id": "x", "turns": [{"role": "user", "text": "Hi"}], "labels": labels, **line}
    return to_item(3, obj, mapping or LabelMap(), source="set.jsonl", max_bytes=10_000)


def test_the_shared_datasets_labels_work_through_the_mapping():
    assert KNOWN_LABELS == {
        "primary_domain": "topic",
        "primary_task": "subtopic",
        "user_reported_task_success": "is_success",
        "abstractive_summaries": "summaries",
        "low_satisfaction_user_turns": "misunderstood",
    }
    labels = LabelMap()
    star = dict(read_lines(DATASETS / "star" / "sample.jsonl"))
    first = to_item(1, star[1], labels, source="star", max_bytes=10**6)
    assert first.id == "star-2397" and first.transcript.format == "chat"
    assert len(first.transcript.turns) == 14 and first.transcript.turns[1].role.value == "agent"
    assert (first.gold.topic, first.gold.subtopic) == ("ride", "ride_book")
    assert first.gold.is_success is None  # the user gave no verdict: not scored
    assert first.gold.custom["happy_path"] is False  # a field of that name would score it

    uss = read_lines(DATASETS / "uss_multiwoz" / "sample.jsonl")
    n, obj = next((n, o) for n, o in uss if o["labels"]["low_satisfaction_user_turns"])
    item = to_item(n, obj, labels, source="uss", max_bytes=10**6)
    users = [t["text"] for t in obj["turns"] if t["role"] == "user"]
    indexes = obj["labels"]["low_satisfaction_user_turns"]
    assert item.gold.misunderstood == [users[i] for i in indexes]  # indexes among user turns
    assert item.gold.topic == obj["labels"]["primary_domain"]

    tweets = dict(read_lines(DATASETS / "tweetsumm" / "sample.jsonl"))
    item = to_item(1, tweets[1], labels, source="tweetsumm", max_bytes=10**6)
    assert item.gold.summaries == tweets[1]["labels"]["abstractive_summaries"]
    assert len(item.gold.summaries) == 3


def test_flags_and_configuration_map_names_and_values():
    mapping = LabelMap.build(
        {"domain": "topic", "primary_domain": "-"},
        {"Topic": {"Rides ": "ride"}},
        ["ok=is_success", "primary_task=-", "mood=angry"],
    )
    gold = _item(
        {
            "domain": "rides",
            "primary_domain": "ignored",
            "primary_task": "ignored too",
            "ok": "yes",
            "mood": True,
        },
        mapping,
    ).gold
    assert gold.topic == "ride"  # renamed, and its value in the taxonomy's words
    assert gold.is_success is True
    assert gold.custom == {"angry": True}
    assert gold.subtopic is None
    assert mapping.explicit_fields() == {"angry"}
    assert _item({"domain": "Rides"}, mapping).gold.topic == "ride"  # value mapped, any case
    assert _item({"domain": "Boats"}, mapping).gold.topic == "Boats"  # no mapping: as it is


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"labels": {"topic": ["a"]}}, "label 'topic' must be a name"),
        ({"labels": {"is_success": "maybe"}}, "must be true or false"),
        ({"labels": {"misunderstood": [4]}}, "user turn 4 does not exist"),
        ({"labels": {"summaries": [1]}}, "must be a text or a list of texts"),
        ({"labels": []}, "labels must be an object"),
        ({"transcript": "User: hi"}, "give either turns or transcript"),
        ({"turns": []}, "turns must be a non-empty list"),
    ],
)
def test_a_bad_line_is_named(line, message):
    with pytest.raises(InputError, match=message) as info:
        _item(line.pop("labels", {}), **line)
    assert str(info.value).startswith("set.jsonl, line 3: ")


def test_a_transcript_in_any_format_and_labels_by_text():
    obj = {
        "id": 7,
        "transcript": "Agent: How can I help?\nUser: I need a taxi.\nUser: Now, please.",
        "labels": {"misunderstood": ["Now, please.", 0]},
    }
    item = to_item(1, obj, LabelMap(), source="s", max_bytes=10_000)
    assert item.id == "7" and item.transcript.format == "text"
    assert item.gold.misunderstood == ["Now, please.", "I need a taxi."]


def test_read_lines_names_the_line_that_is_not_json(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"id": 1}) + "\n\n{oops\n")
    with pytest.raises(InputError, match=r"set.jsonl, line 3: not JSON"):
        list(read_lines(path))


def test_without_rouge_score_the_error_names_the_extra(monkeypatch):
    import sys

    from enrich.errors import ConfigError
    from enrich.evaluation import metrics

    metrics._scorer.cache_clear()
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if not installed
    try:
        with pytest.raises(ConfigError, match=r"pip install 'enrich\[eval\]'"):
            rouge_l("a summary", ["a reference"])
    finally:
        metrics._scorer.cache_clear()


def test_the_plain_table_and_the_json_of_a_report():
    from enrich.evaluation import EvalReport, VariantScores, plain_table, to_json
    from enrich.evaluation.scores import Figure, Operations

    def variant(name: str, value: float) -> VariantScores:
        ops = Operations(items=4, answered=3, invalid=1, reasked=1, cost=None)
        figure = Figure(value=value, low=value - 0.25, high=value, n=4)
        return VariantScores(name=name, model="m", figures={"topic_accuracy": figure}, ops=ops)

    report = EvalReport(
        source="set.jsonl",
        items=4,
        seed=0,
        rounds=10,
        labels={"domain": "topic"},
        variants=[variant("a", 0.75), variant("b\x1b[31m", 0.5)],
    )
    strip = lambda s: s.replace("\x1b", "")  # noqa: E731
    lines = plain_table(report, strip).splitlines()
    assert lines[0] == "set.jsonl: 4 items"
    assert lines[1].split() == ["metric", "a", "b[31m"]
    topic = next(line for line in lines if line.startswith("topic accuracy"))
    assert topic.split("  ")[-1].strip() == "0.500 [0.250, 0.500]"
    assert "0.750 [0.500, 0.750]" in topic
    invalid = next(line for line in lines if line.startswith("no valid answer"))
    assert invalid.endswith("25.0% (1)")
    data = json.loads(to_json(report))
    assert data["variants"][0]["ops"]["invalid_rate"] == 0.25
    assert data["variants"][0]["ops"]["reask_rate"] == pytest.approx(1 / 3)
