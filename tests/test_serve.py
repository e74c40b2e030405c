"""`enrich serve`, driven over real HTTP: a Uvicorn server on loopback (in a thread), webhooks
signed exactly as each platform signs them (and wrongly, stale, replayed, oversized, malformed),
the fake LLM and the fake ChatDash on the far side of their sockets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import CHATDASH_KEY, FIXTURES, OPENAI_KEY, make_config

from enrich.ledger import SQLiteLedger
from enrich.serve import create_app
from enrich.serve.verify import Verifier
from enrich.testing.webhooks import elevenlabs_headers, retell_headers, vapi_headers

RETELL_KEY = "key_5ec2e7retell0000000000000"
VAPI_SECRET = "vapi-5ec2e7-secret-000000"
ELEVEN_SECRET = "wsec_5ec2e7elevenlabs0000000"
SECRETS = (RETELL_KEY, VAPI_SECRET, ELEVEN_SECRET, OPENAI_KEY, CHATDASH_KEY)
AGENT = "agent-1"


# -- payloads as the platforms send them -------------------------------------------------------


def payload(platform: str, call_id: str) -> bytes:
    """The platform's call-end webhook (a fixture), for the call ``call_id``."""
    if platform == "retell":
        data = json.loads((FIXTURES / "formats" / "retell-call-analyzed.json").read_text())
        data["call"]["call_id"] = call_id
    elif platform == "vapi":
        data = json.loads((FIXTURES / "formats" / "vapi-end-of-call-report.json").read_text())
        data["message"]["call"]["id"] = call_id
    else:
        data = json.loads((FIXTURES / "formats" / "elevenlabs-webhook.json").read_text())
        data["data"]["conversation_id"] = call_id
    # the platforms' own spacing, not Python's default: a re-serialised body would not match
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def signed(platform: str, body: bytes, **kwargs: Any) -> dict[str, str]:
    if platform == "retell":
        return retell_headers(body, kwargs.pop("secret", RETELL_KEY), **kwargs)
    if platform == "vapi":
        return vapi_headers(body, kwargs.pop("secret", VAPI_SECRET), **kwargs)
    return elevenlabs_headers(body, kwargs.pop("secret", ELEVEN_SECRET), **kwargs)


# -- a real server on loopback -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, app: Any, ledger: SQLiteLedger) -> None:
        self.url, self.app, self.ledger = url, app, ledger

    def post(self, platform: str, body: bytes, headers: dict[str, str], agent: str = AGENT):
        return httpx.post(
            f"{self.url}/webhooks/{platform}/{agent}", content=body, headers=headers, timeout=10
        )

    def deliver(self, platform: str, call_id: str, **kwargs: Any) -> httpx.Response:
        body = payload(platform, call_id)
        return self.post(platform, body, signed(platform, body, **kwargs))

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


@contextmanager
def serving(llm, chatdash, tmp_path: Path, **serve: Any) -> Iterator[Server]:
    settings = {
        "retell_api_key": RETELL_KEY,
        "vapi_secret": VAPI_SECRET,
        "elevenlabs_secret": ELEVEN_SECRET,
        "retry_delay": 0.1,
        "max_retry_delay": 0.3,
        "grace_seconds": 5,
        **serve,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    ledger_path = tmp_path / "ledger.sqlite3"
    config = make_config(llm, chatdash, ledger={"path": str(ledger_path)}, serve=settings)
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}", app, SQLiteLedger(ledger_path))
    finally:
        server.should_exit = True
        thread.join(15)


def known(chatdash, *call_ids: str, agent: str = AGENT) -> None:
    """ChatDash has imported these calls: conversation ``cd-<call id>`` for each."""
    for call_id in call_ids:
        chatdash.conversations[(agent, f"cd-{call_id}")] = {"platformId": call_id}


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def put_paths(chatdash) -> list[str]:
    return [path for method, path, _, _ in chatdash.requests if method == "PUT"]


# -- verification ------------------------------------------------------------------------------


def test_the_retell_signature_is_checked_as_retells_own_sdk_computes_it():
    """Retell's SDK test vector (retell-python-sdk tests/test_webhook_auth.py): its body, key
    and timestamp give this digest."""
    body, key, at = b'{"event":"call_ended"}', b"test-api-key", 1_700_000_000_000
    digest = "07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e"
    check = Verifier("retell", key)
    check.verify(body, {"x-retell-signature": f"v={at},d={digest}"}, now=at / 1000)
    assert retell_headers(body, "test-api-key", at_ms=at)["x-retell-signature"].endswith(digest)
    for bad_body, now in ((body + b" ", at / 1000), (body, at / 1000 + 301)):
        with pytest.raises(Exception, match="does not match|clock"):
            check.verify(bad_body, {"x-retell-signature": f"v={at},d={digest}"}, now=now)


def test_each_platform_signed_as_it_signs_is_enriched_and_written(
    fake_llm, fake_chatdash, tmp_path
):
    known(fake_chatdash, "r-1", "v-1", "v-2", "e-1")
    with serving(fake_llm, fake_chatdash, tmp_path) as server:
        answers = [
            server.deliver("retell", "r-1"),
            server.deliver("vapi", "v-1", auth="bearer"),
            server.deliver("vapi", "v-2", auth="secret"),
            server.deliver("elevenlabs", "e-1"),
        ]
        assert [a.status_code for a in answers] == [202] * 4
        assert answers[0].json() == {"status": "queued", "call_id": "r-1"}
        wait_for(lambda: len(fake_chatdash.puts) == 4)
        time.sleep(0.2)
        counts = server.ledger.webhook_counts()
    assert sorted(put_paths(fake_chatdash)) == sorted(
        f"/v1/public/agents/{AGENT}/conversations/cd-{c}" for c in ("r-1", "v-1", "v-2", "e-1")
    )
    assert fake_llm.count == 4 and not fake_chatdash.violations
    assert counts == {"queued": 0, "done": 4, "failed": 0, "deliveries": 4}
    for call_id in ("r-1", "e-1"):  # the conversation has its usual ledger entry
        assert server.ledger.get(AGENT, f"cd-{call_id}").state == "written"


def test_vapi_hmac_credential_with_its_configured_headers(fake_llm, fake_chatdash, tmp_path):
    known(fake_chatdash, "v-h")
    hmac_settings = {"vapi_auth": "hmac", "vapi_signature_header": "x-vapi-signature"}
    with serving(fake_llm, fake_chatdash, tmp_path, **hmac_settings) as server:
        body = payload("vapi", "v-h")
        good = vapi_headers(body, VAPI_SECRET, auth="hmac", signature_header="x-vapi-signature")
        assert server.post("vapi", body, vapi_headers(body, VAPI_SECRET)).status_code == 401
        stale = vapi_headers(
            body,
            VAPI_SECRET,
            auth="hmac",
            signature_header="x-vapi-signature",
            at=int(time.time()) - 600,
        )
        assert server.post("vapi", body, stale).status_code == 401
        assert server.post("vapi", body, good).status_code == 202
        wait_for(lambda: len(fake_chatdash.puts) == 1)


@pytest.mark.parametrize("platform", ["retell", "vapi", "elevenlabs"])
def test_wrong_stale_missing_or_reserialised_signatures_get_401_and_store_nothing(
    platform, fake_llm, fake_chatdash, tmp_path
):
    known(fake_chatdash, "c-1")
    body = payload(platform, "c-1")
    reserialised = json.dumps(json.loads(body), indent=1).encode()  # same JSON, other bytes
    cases = {
        "wrong secret": (body, signed(platform, body, secret="not-the-secret-at-all")),
        "missing": (body, {"content-type": "application/json"}),
        "re-serialised body": (reserialised, signed(platform, body)),
    }
    if platform == "retell":
        cases["stale"] = (body, signed(platform, body, at_ms=int(time.time() * 1000) - 360_000))
        cases["garbled"] = (body, {"x-retell-signature": "v=1,d=zz"})
    elif platform == "elevenlabs":
        cases["stale"] = (body, signed(platform, body, at=int(time.time()) - 31 * 60))
        cases["garbled"] = (body, {"ElevenLabs-Signature": "v0=abc"})
    else:  # a token credential signs no body: a Basic header or a truncated token instead
        del cases["re-serialised body"]
        cases["garbled"] = (body, {"Authorization": f"Basic {VAPI_SECRET}"})
        cases["truncated"] = (body, {"X-Vapi-Secret": VAPI_SECRET[:-1]})
    with serving(fake_llm, fake_chatdash, tmp_path) as server:
        for name, (sent, headers) in cases.items():
            answer = server.post(platform, sent, headers)
            assert answer.status_code == 401, name
            assert platform in answer.json()["error"], name
        metrics = server.metrics()
        counts = server.ledger.webhook_counts()
    assert counts["deliveries"] == 0  # nothing stored
    assert fake_llm.count == 0 and fake_chatdash.requests == []
    assert f'enrich_webhooks_received_total{{platform="{platform}"}} {len(cases)}.0' in metrics
    assert f'platform="{platform}",reason="bad_signature"' in metrics
    if "stale" in cases:
        assert f'enrich_webhooks_rejected_total{{platform="{platform}",reason="stale"}} 1.0' in (
            metrics
        )


def test_a_platform_without_a_secret_is_refused_unless_insecure(fake_llm, fake_chatdash, tmp_path):
    known(fake_chatdash, "v-9")
    body = payload("vapi", "v-9")
    with serving(fake_llm, fake_chatdash, tmp_path / "a", vapi_secret=None) as server:
        answer = server.post("vapi", body, {"content-type": "application/json"})
        assert answer.status_code == 401 and "VAPI_WEBHOOK_SECRET" in answer.json()["error"]
        assert 'reason="no_secret"' in server.metrics()
        assert server.ledger.webhook_counts()["deliveries"] == 0
    insecure = {"vapi_secret": None, "insecure_no_verify": True}
    with serving(fake_llm, fake_chatdash, tmp_path / "b", **insecure) as server:
        assert server.post("vapi", body, {}).status_code == 202  # unsigned, on purpose
        retell = payload("retell", "r-9")  # a platform with a secret is still verified
        assert server.post("retell", retell, {}).status_code == 401
        wait_for(lambda: len(fake_chatdash.puts) == 1)


def test_oversized_and_malformed_bodies_are_refused_with_a_reason(
    fake_llm, fake_chatdash, tmp_path
):
    def retell(data: Any) -> bytes:
        return json.dumps(data).encode()

    good = payload("retell", "r-big")
    no_transcript = json.loads(good)
    no_transcript["call"]["transcript_object"] = "not a list"
    padded = json.loads(good)
    padded["call"]["metadata"] = {"pad": "x" * 5000}
    cases = [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe\x00garbage", 400, "not JSON"),
        (retell([1, 2]), 400, "not a JSON object"),
        (retell({"call": {"call_id": "x"}}), 400, "no event type"),
        (retell({"event": "call_analyzed", "call": {}}), 400, "no call id"),
        (retell({"event": "call_analyzed", "call": "x"}), 400, "not a JSON object"),
        (retell(padded), 413, "over 4000 bytes"),
    ]
    with serving(fake_llm, fake_chatdash, tmp_path, max_body_bytes=4000) as server:
        for body, status, reason in cases:
            answer = server.post("retell", body, signed("retell", body))
            assert answer.status_code == status, reason
            assert reason in answer.json()["error"]
        big = retell(padded)  # sent in chunks, no Content-Length: cut off as it streams
        chunked = httpx.post(
            f"{server.url}/webhooks/retell/{AGENT}",
            content=(big[i : i + 1000] for i in range(0, len(big), 1000)),
            headers=signed("retell", big),
        )
        assert chunked.status_code == 413
        # a transcript that cannot be read is the worker's to find (it takes too long to read
        # here): accepted, then failed with the reason, no LLM call, nothing written
        unreadable = retell(no_transcript)
        assert server.post("retell", unreadable, signed("retell", unreadable)).status_code == 202
        wait_for(lambda: server.ledger.webhook_counts()["failed"] == 1)
        failed = server.ledger.webhook_items()[0]
        assert "transcript_object: expected a list" in failed.last_error
        small = _small_retell("r-1")  # an id no URL can carry
        odd = server.post("retell", small, signed("retell", small), agent="a%01b")
        assert odd.status_code == 400 and "control character" in odd.json()["error"]
        counts = server.ledger.webhook_counts()
        metrics = server.metrics()
    assert counts == {"queued": 0, "done": 0, "failed": 1, "deliveries": 1}  # the unreadable one
    assert 'reason="malformed"} 7.0' in metrics and 'reason="too_large"} 2.0' in metrics
    assert 'enrich_webhooks_failed_total{platform="retell"} 1.0' in metrics
    assert fake_llm.count == 0 and fake_chatdash.puts == []


def _small_retell(call_id: str) -> bytes:
    return json.dumps(
        {
            "event": "call_analyzed",
            "call": {
                "call_id": call_id,
                "call_status": "ended",
                "transcript": "Agent: Hello, how can I help?\nUser: I need a refund.",
            },
        }
    ).encode()


def test_other_events_get_204_and_are_ignored(fake_llm, fake_chatdash, tmp_path):
    others = {
        "retell": {"event": "call_started", "call": {"call_id": "r-x"}},
        "vapi": {"message": {"type": "status-update", "call": {"id": "v-x"}}},
        "elevenlabs": {"type": "post_call_audio", "data": {"conversation_id": "e-x"}},
    }
    with serving(fake_llm, fake_chatdash, tmp_path) as server:
        for platform, data in others.items():
            body = json.dumps(data).encode()
            answer = server.post(platform, body, signed(platform, body))
            assert answer.status_code == 204, platform
        # Retell's call_ended is ignored too, unless serve.retell_event says otherwise
        ended = json.loads(_small_retell("r-y"))
        ended["event"] = "call_ended"
        body = json.dumps(ended).encode()
        assert server.post("retell", body, signed("retell", body)).status_code == 204
        assert server.ledger.webhook_counts()["deliveries"] == 0
        assert 'enrich_webhooks_ignored_total{platform="retell"} 2.0' in server.metrics()
    known(fake_chatdash, "r-y")
    with serving(fake_llm, fake_chatdash, tmp_path / "b", retell_event="call_ended") as server:
        assert server.post("retell", body, signed("retell", body)).status_code == 202
        wait_for(lambda: len(fake_chatdash.puts) == 1)


# -- idempotent, durable -----------------------------------------------------------------------


def test_duplicate_and_replayed_deliveries_cost_one_llm_call_and_one_put(
    fake_llm, fake_chatdash, tmp_path
):
    known(fake_chatdash, "r-dup")
    fake_llm.latency = 0.5  # the first is still being enriched while the others arrive
    body = payload("retell", "r-dup")
    headers = signed("retell", body)
    with serving(fake_llm, fake_chatdash, tmp_path, concurrency=4) as server:
        with ThreadPoolExecutor(8) as pool:  # at once, the same signed delivery
            answers = list(pool.map(lambda _: server.post("retell", body, headers), range(8)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] * 7 + [202]
        wait_for(lambda: len(fake_chatdash.puts) == 1)
        time.sleep(1.0)  # anything more would have happened by now
        again = server.post("retell", body, headers)  # a replay of the same delivery
        retried = server.post("retell", body, signed("retell", body))  # the platform retrying
        time.sleep(0.5)
        metrics = server.metrics()
    assert again.json()["status"] == retried.json()["status"] == "duplicate"
    assert fake_llm.count == 1 and len(fake_chatdash.puts) == 1
    assert 'enrich_webhooks_duplicates_total{platform="retell"} 9.0' in metrics
    assert server.ledger.webhook_counts()["deliveries"] == 10


def test_a_call_chatdash_has_not_imported_yet_is_retried_then_written(
    fake_llm, fake_chatdash, tmp_path
):
    fake_chatdash.import_delay = 0.8  # 404 until then, as ChatDash imports the call itself
    with serving(fake_llm, fake_chatdash, tmp_path) as server:
        assert server.deliver("elevenlabs", "e-late").status_code == 202
        wait_for(lambda: len(fake_chatdash.puts) == 1)
        time.sleep(0.2)
        metrics = server.metrics()
        item = server.ledger.webhook_items()[0]
    lookups = [p for m, p, _, _ in fake_chatdash.requests if "isPlatformId=true" in p]
    assert len(lookups) >= 3  # 404, 404..., then found
    assert put_paths(fake_chatdash) == [f"/v1/public/agents/{AGENT}/conversations/cd-e-late"]
    assert item.state == "done" and item.conversation_id == "cd-e-late"
    assert 'enrich_webhooks_retried_total{platform="elevenlabs",reason="not_found"}' in metrics
    assert fake_llm.count == 1


def test_a_call_never_imported_fails_after_the_window_and_replay_requeues_it(
    fake_llm, fake_chatdash, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from enrich.cli import app as cli

    with serving(fake_llm, fake_chatdash, tmp_path, retry_window=0.5) as server:
        assert server.deliver("retell", "r-lost").status_code == 202
        wait_for(lambda: server.ledger.webhook_counts()["failed"] == 1)
        item = server.ledger.webhook_items()[0]
        assert "404" in item.last_error and "gave up after 0.5s" in item.last_error
        assert fake_llm.count == 0 and fake_chatdash.puts == []
        assert 'enrich_webhooks_failed_total{platform="retell"} 1.0' in server.metrics()

        monkeypatch.setenv("ENRICH_LEDGER", str(tmp_path / "ledger.sqlite3"))
        monkeypatch.setenv("ENRICH_CONFIG", "none")
        monkeypatch.setenv("CHATDASH_API_KEY", CHATDASH_KEY)
        monkeypatch.setenv("CHATDASH_BASE_URL", fake_chatdash.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        stats = CliRunner().invoke(cli, ["ledger", "stats", "--json"])
        assert stats.exit_code == 0, stats.output
        assert json.loads(stats.stdout)["webhooks"]["failed"] == 1
        plain = CliRunner().invoke(cli, ["replay"])
        assert "enrich replay --failed" in plain.stderr  # says the webhook waits, moves nothing
        assert server.ledger.webhook_counts()["failed"] == 1

        known(fake_chatdash, "r-lost")  # ChatDash has it now
        replay = CliRunner().invoke(cli, ["replay", "--failed", "--json"])
        assert replay.exit_code == 0, replay.output
        assert json.loads(replay.stdout)["webhooks"]["requeued"] == 1
        wait_for(lambda: len(fake_chatdash.puts) == 1)  # the running server finishes it
    assert put_paths(fake_chatdash) == [f"/v1/public/agents/{AGENT}/conversations/cd-r-lost"]


def test_the_answer_never_waits_for_the_llm(fake_llm, fake_chatdash, tmp_path):
    fake_llm.latency = 3.0
    calls = [f"r-slow-{i}" for i in range(20)]
    known(fake_chatdash, *calls)
    with serving(fake_llm, fake_chatdash, tmp_path, concurrency=4, grace_seconds=0) as server:
        timings = []
        for call_id in calls:
            started = time.perf_counter()
            assert server.deliver("retell", call_id).status_code == 202
            timings.append(time.perf_counter() - started)
        assert fake_chatdash.puts == []  # none written yet: the LLM takes 3 s
    assert max(timings) < 1.0, timings


# -- what it shows -----------------------------------------------------------------------------


def test_healthz_metrics_errors_and_logs_never_show_a_secret(
    fake_llm, fake_chatdash, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    known(fake_chatdash, "r-ok")
    fake_chatdash.faults.clear()
    with serving(fake_llm, fake_chatdash, tmp_path) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        shown = []
        body = payload("retell", "r-ok")
        for secret in SECRETS:  # a caller trying every secret it can think of
            shown.append(server.post("retell", body, {"x-retell-signature": secret}).text)
            shown.append(server.post("vapi", body, {"Authorization": f"Bearer {secret}x"}).text)
        assert server.deliver("retell", "r-ok").status_code == 202
        assert server.deliver("retell", "r-unknown").status_code == 202  # 404s, logged
        wait_for(lambda: len(fake_chatdash.puts) == 1)
        time.sleep(0.3)
        metrics = server.metrics()
        shown.append(metrics)
        shown.append(repr(server.app.state.enricher.config.serve))
    for name in (
        "enrich_webhooks_received_total",
        "enrich_webhooks_written_total",
        "enrich_webhook_queue_depth",
        "enrich_llm_tokens_total",
        "enrich_llm_cost_usd_total",
        "enrich_webhook_acceptance_seconds_bucket",
    ):
        assert name in metrics, name
    assert 'enrich_webhooks_written_total{platform="retell"} 1.0' in metrics
    text = "\n".join(shown) + caplog.text
    for secret in SECRETS:
        assert secret not in text
