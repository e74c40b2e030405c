"""The ledger's webhook queue (`enrich serve`'s), as the interface states it: deduplicated on
(platform, call id), leased to a holder, settled only while queued, requeued after a failure,
and freed at once when its holder's process is gone."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from enrich.ledger import SQLiteLedger, WebhookState

AT = "2026-01-01T00:00:00.000+00:00"


@pytest.fixture
def ledger(tmp_path):
    return SQLiteLedger(tmp_path / "ledger.sqlite3")


def test_a_call_is_queued_once_and_its_deliveries_counted(ledger):
    assert ledger.webhook_enqueue("retell", "c1", "a1", b'{"x": 1}', AT) is True
    assert ledger.webhook_enqueue("retell", "c1", "a1", b'{"x": 2}', AT) is False
    assert ledger.webhook_enqueue("vapi", "c1", "a1", b"{}", AT) is True  # another platform
    items = ledger.webhook_items()
    assert [(i.platform, i.deliveries) for i in items] == [("retell", 2), ("vapi", 1)]
    assert items[0].payload == b'{"x": 1}'  # the first delivery's bytes, kept as they were
    assert ledger.webhook_counts() == {"queued": 2, "done": 0, "failed": 0, "deliveries": 3}


def test_take_leases_one_item_to_one_taker(ledger):
    for call in ("c1", "c2"):
        ledger.webhook_enqueue("retell", call, "a1", b"{}", AT)
    first, second = ledger.webhook_take(60), ledger.webhook_take(60)
    assert {first.call_id, second.call_id} == {"c1", "c2"}
    assert first.attempts == 1 and first.state == WebhookState.QUEUED
    assert ledger.webhook_take(60) is None  # both held by a live holder (this process)
    assert ledger.webhook_renew("retell", first.call_id, 60) is True


def test_settling_retry_fail_done_and_requeue(ledger):
    ledger.webhook_enqueue("retell", "c1", "a1", b"{}", AT)
    item = ledger.webhook_take(60)
    ledger.webhook_retry("retell", "c1", 0.3, "404")
    assert ledger.webhook_take(60) is None  # not due yet
    time.sleep(0.35)
    again = ledger.webhook_take(60)
    assert again.call_id == "c1" and again.attempts == 2 and again.last_error == "404"
    ledger.webhook_fail("retell", "c1", "gave up")
    ledger.webhook_done("retell", "c1", "conv", "written")  # a late answer: changes nothing
    assert ledger.webhook_items(WebhookState.FAILED)[0].last_error == "gave up"
    assert ledger.webhook_requeue(platform="vapi") == 0
    assert ledger.webhook_requeue() == 1
    back = ledger.webhook_take(60)
    assert back.attempts == 1 and back.queued_at > item.queued_at
    ledger.webhook_done("retell", "c1", "conv", "written")
    ledger.webhook_retry("retell", "c1", 0, "late")  # done stays done
    done = ledger.webhook_items(WebhookState.DONE)[0]
    assert (done.conversation_id, done.last_error) == ("conv", "written")
    assert ledger.webhook_take(60) is None


def test_an_item_whose_holder_is_gone_is_taken_again_at_once(ledger):
    ledger.webhook_enqueue("retell", "c1", "a1", b"{}", AT)
    code = (
        "import sys, time; from enrich.ledger import SQLiteLedger\n"
        "l = SQLiteLedger(sys.argv[1]); print(l.webhook_take(600).call_id, flush=True)\n"
        "time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(ledger.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "c1"
        assert ledger.webhook_take(60) is None  # its holder lives: leased for 600 s
        holder.kill()
        holder.wait()
        assert ledger.webhook_take(60).call_id == "c1"  # gone: free at once
    finally:
        holder.kill()
