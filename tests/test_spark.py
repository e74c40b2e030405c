"""enrich on Spark: a real local cluster (``local-cluster[2,1,1024]``: two executor JVMs, each
with its own Python workers) enriching DataFrames against the fake servers on 127.0.0.1.

Over 1,000 conversations (and 50 of them twice, in another partition running at the same time):
each paid for once, each written once, the results as columns, the cluster held under one
``llm.rpm`` shared through the ledger, and a second job paying and writing nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import CHATDASH_KEY, TRANSCRIPT, make_config, put_schema
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from enrich.errors import ConfigError
from enrich.integrations.spark import enrich_dataframe, result_columns, schema
from enrich.ledger import State, open_ledger
from enrich.testing import FakeChatDash, FakeLLM, Reply, valid_answer

N = 1000
DUPLICATES = 50
RPM = 3000  # 50 a second: the job is paced (unpaced, the cluster would go several times faster)
LATENCY = 0.5
CONCURRENCY = 64  # two tasks at once could go at 256 a second: the limit alone holds them
# Starting the cluster's JVMs takes 15 s on an idle 2-core machine, and the job is paced to
# take 20 s: more than the default timeout on a busy machine.
pytestmark = pytest.mark.timeout(300)

EXECUTOR_OPENAI_KEY = "sk-executor-0123456789abcdef"
ROWS = T.StructType(
    [T.StructField(c, T.StringType()) for c in ("agent_id", "conversation_id", "transcript")]
)


@pytest.fixture(scope="module")
def spark():
    saved = {k: os.environ.get(k) for k in ("SPARK_LOCAL_IP", "PYSPARK_PYTHON")}
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # everything on loopback
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the executors' Python workers: this venv's
    session = (
        SparkSession.builder.master("local-cluster[2,1,1024]")
        .appName("enrich-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        # the executors' own keys (for keys_from_env); the driver's differ
        .config("spark.executorEnv.OPENAI_API_KEY", EXECUTOR_OPENAI_KEY)
        .config("spark.executorEnv.CHATDASH_API_KEY", CHATDASH_KEY)
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def marker(i: int) -> str:
    return f"ref-{i:04d}"


def frame(spark, partitions):
    """A DataFrame whose partitions are exactly ``partitions`` (lists of rows), in order."""
    return spark.sparkContext.parallelize(partitions, len(partitions)).flatMap(iter).toDF(ROWS)


def conversations(spark):
    """1,000 conversations in 4 partitions; 50 of the first partition's and 50 of the third's
    come again at the start of the next partition, which runs beside it on the other executor."""
    rows = [("agent-1", f"c{i:04d}", TRANSCRIPT + f"User: {marker(i)}\n") for i in range(N)]
    half = DUPLICATES // 2
    parts = [
        rows[0:250],
        rows[0:half] + rows[250:500],
        rows[500:750],
        rows[500 : 500 + half] + rows[750:1000],
    ]
    return frame(spark, parts)


@pytest.fixture(scope="module")
def cluster_run(spark, tmp_path_factory):
    """The 1,000 conversations enriched and written once, the fakes kept for the tests."""
    arrivals: list[float] = []

    def respond(request):
        arrivals.append(time.monotonic())
        return Reply.json(valid_answer(request))

    with (
        FakeLLM(latency=LATENCY, responder=respond) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        ledger = tmp_path_factory.mktemp("spark") / "ledger.sqlite3"
        config = make_config(llm, chatdash, llm={"rpm": RPM}, ledger={"path": str(ledger)})
        df = conversations(spark)
        busy, done = [], threading.Event()

        def watch():  # how many executors run a task of the job at once
            tracker = spark.sparkContext._jsc.sc().statusTracker()
            while not done.wait(0.2):
                busy.append(sum(i.numRunningTasks() > 0 for i in tracker.getExecutorInfos()))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        start = time.monotonic()
        try:
            out = collect(enrich_dataframe(df, config, concurrency=CONCURRENCY))
        finally:
            seconds = time.monotonic() - start
            done.set()
            watcher.join()
        yield SimpleNamespace(
            llm=llm,
            chatdash=chatdash,
            config=config,
            ledger=ledger,
            df=df,
            out=out,
            seconds=seconds,
            executors_at_once=max(busy, default=0),
            arrivals=sorted(arrivals),
        )


def collect(df) -> pd.DataFrame:
    """The rows of ``df``, with None for every null (not NaN)."""
    out = df.toPandas().astype(object)
    return out.where(out.notna(), None)


def asked(llm) -> Counter:
    """LLM requests per conversation (by the marker in its transcript)."""
    found = Counter()
    for request in llm.requests:
        text = " ".join(str(m.get("content")) for m in request["messages"])
        found.update(re.findall(r"ref-\d{4}", text))
    return found


def written(chatdash) -> Counter:
    return Counter(path for _, path, _, _ in chatdash.puts)


def test_each_conversation_is_paid_for_once_and_written_once(cluster_run):
    r = cluster_run
    assert len(r.out) == N + DUPLICATES  # one result row per input row
    assert r.out["status"].value_counts().to_dict() == {"written": N, "skipped": DUPLICATES}
    assert r.out["error_type"].isna().all() and r.out["error"].isna().all()
    paid = asked(r.llm)
    assert r.llm.count == N and len(paid) == N and set(paid.values()) == {1}
    puts = written(r.chatdash)
    assert len(puts) == N and set(puts.values()) == {1} and r.chatdash.violations == []
    # the duplicates ran in another executor at the same time, and came back as done already
    dups = r.out[r.out["status"] == "skipped"]
    assert dups["conversation_id"].nunique() == DUPLICATES
    assert set(dups["conversation_id"]) <= {f"c{i:04d}" for i in [*range(25), *range(500, 525)]}
    # two executors (JVMs, each with its Python worker) ran tasks of the job at once
    assert r.executors_at_once == 2
    # every conversation's enrichment and state in the ledger, shared by every worker
    ledger = open_ledger(r.ledger)
    states = Counter(e.state for e in ledger.entries())
    ledger.close()
    assert states == {State.WRITTEN: N}


def test_the_results_are_columns(cluster_run):
    out = cluster_run.out
    assert list(out.columns) == result_columns(cluster_run.config)
    done = out[out["status"] == "written"]
    assert (done["topic"] == "Account").all() and done["summary"].notna().all()
    assert done["is_success"].map(type).eq(bool).all()
    paid = out[out["reused"] == False]  # noqa: E712 - the rows that paid: one a conversation
    assert len(paid) == N and paid["conversation_id"].nunique() == N
    assert (paid["requests"] == 1).all() and (paid["prompt_tokens"] > 100).all()
    assert done["error"].isna().all() and done["stage"].isna().all()
    assert sorted(out["conversation_id"].unique()) == [f"c{i:04d}" for i in range(N)]


def most_in_a_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) within any ``window`` seconds."""
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        most = max(most, i - j + 1)
    return most


def test_the_cluster_stays_under_the_shared_rate_limit(cluster_run):
    """Any 10-second window holds at most 10 s of the limit, its 1-second burst, and the first
    requests of the tasks running at once, which may reach the server together: 678 (paced, some
    570 at most); executors pacing alone would each go at the full limit (some 950)."""
    times = cluster_run.arrivals
    assert len(times) == N
    window = 10.0
    allowed = RPM / 60 * (window + 1) + 2 * CONCURRENCY
    most = most_in_a_window(times, window)
    span = times[-1] - times[0]
    print(f"{most} in the busiest {window:.0f} s (allowed {allowed:.0f}); {N} in {span:.1f} s")
    assert most <= allowed, f"{most} requests in {window:.0f} s (the limit allows {allowed:.0f})"
    # and the job was paced by it, not by anything else: it took about N / (RPM / 60) seconds
    assert span >= (N - RPM / 60) / (RPM / 60) * 0.95, span


def test_a_second_job_pays_nothing_and_writes_nothing(cluster_run):
    r = cluster_run
    again = collect(enrich_dataframe(r.df, r.config, concurrency=CONCURRENCY))
    assert len(again) == N + DUPLICATES
    assert (again["status"] == "skipped").all()
    assert r.llm.count == N and len(r.chatdash.puts) == N


def test_a_cluster_shares_a_postgres_ledger(spark, postgres_url):
    """The ledger a cluster of several hosts uses: a postgresql:// URL, given as it is."""
    n, rpm, arrivals = 200, 1500, []

    def respond(request):
        arrivals.append(time.monotonic())
        return Reply.json(valid_answer(request))

    rows = [("agent-1", f"p{i:03d}", TRANSCRIPT + f"User: {marker(i)}\n") for i in range(n)]
    df = frame(spark, [rows[:100], rows[:10] + rows[100:]])  # 10 twice, at the same time
    with (
        FakeLLM(latency=0.2, responder=respond) as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        config = make_config(llm, chatdash, llm={"rpm": rpm})
        out = collect(enrich_dataframe(df, config, ledger=postgres_url, concurrency=16))
        assert len(out) == n + 10 and out["error"].isna().all()
        assert sorted(out["status"].value_counts().items()) == [("skipped", 10), ("written", n)]
        paid = asked(llm)
        assert llm.count == n and len(paid) == n and set(paid.values()) == {1}
        assert len(written(chatdash)) == n and set(written(chatdash).values()) == {1}
        # 4 s of the limit, its burst, the tasks' first requests: 157 (unshared, some 240)
        assert most_in_a_window(sorted(arrivals), 4.0) <= rpm / 60 * (4 + 1) + 2 * 16
        ledger = open_ledger(postgres_url)
        try:
            assert Counter(e.state for e in ledger.entries()) == {State.WRITTEN: n}
        finally:
            ledger.close()


def test_a_row_that_cannot_be_enriched_is_a_failed_row(spark, tmp_path):
    with (
        FakeLLM() as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        chatdash.conversations[("agent-1", "fetched")] = {}
        chatdash.messages[("agent-1", "fetched")] = [
            {"sender": "bot", "type": "text", "content": {"text": "Hello!"}},
            {"sender": "user", "type": "text", "content": {"text": "Cancel my booking."}},
        ]
        config = make_config(llm, chatdash, ledger={"path": str(tmp_path / "l.db")})
        rows = [
            ("agent-1", "ok", TRANSCRIPT),
            (None, "no-agent", TRANSCRIPT),
            ("agent-1", None, TRANSCRIPT),
            ("agent-1", "empty", ""),
            ("agent-1", "fetched", None),  # no transcript: its messages are fetched
            ("agent-1", "unknown", None),  # ChatDash does not know it
            ("agent-1", "..", TRANSCRIPT),  # not an id a request can name
        ]
        out = collect(enrich_dataframe(frame(spark, [rows[:4], rows[4:]]), config))
        assert len(out) == len(rows)
        by = {(r.agent_id, r.conversation_id): r for r in out.itertuples()}
        assert by[("agent-1", "ok")].status == "written"
        assert by[("agent-1", "fetched")].status == "written"
        no_agent = by[(None, "no-agent")]
        assert (no_agent.status, no_agent.stage) == ("failed", "input")
        assert "'agent_id' is null or empty" in no_agent.error
        assert by[("agent-1", None)].status == "failed"
        for cid in ("empty", "unknown", ".."):
            row = by[("agent-1", cid)]
            assert row.status == "failed" and row.error and row.error_type, row
            assert row.topic is None and row.requests is None  # nothing paid
        assert by[("agent-1", "empty")].stage == "input"
        assert llm.count == 2 and len(chatdash.puts) == 2


def test_a_failed_write_keeps_the_paid_result_and_the_next_job_writes_it(spark, tmp_path):
    rows = [("agent-1", f"w{i}", TRANSCRIPT + f"User: {marker(i)}\n") for i in range(6)]
    ledger = str(tmp_path / "l.db")
    with (
        FakeLLM() as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema(), fail_rate=1.0) as down,
    ):
        config = make_config(llm, down, ledger={"path": ledger})
        out = collect(enrich_dataframe(frame(spark, [rows[:3], rows[3:]]), config))
        assert (out["status"] == "failed").all() and (out["stage"] == "chatdash").all()
        assert (out["topic"] == "Account").all() and (out["requests"] == 1).all()  # paid, kept
        assert llm.count == 6
        with FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as up:
            config = make_config(llm, up, ledger={"path": ledger})
            again = collect(enrich_dataframe(frame(spark, [rows[:3], rows[3:]]), config))
            assert (again["status"] == "written").all() and again["reused"].all()
            assert llm.count == 6 and len(up.puts) == 6  # written now, not paid again


def test_enriched_without_writing_then_written_without_paying_again(spark, tmp_path):
    """A dry run first (results kept in the ledger, nothing written), then the write; the
    transcripts are an array of structs (chat messages), sent to enrich as JSON."""
    message = T.StructType(
        [T.StructField("role", T.StringType()), T.StructField("content", T.StringType())]
    )
    rows = T.StructType(
        [
            T.StructField("agent", T.StringType()),
            T.StructField("id", T.LongType()),  # cast to text
            T.StructField("messages", T.ArrayType(message)),
        ]
    )
    chats = [
        ("agent-2", i, [("assistant", "Hello, how can I help?"), ("user", f"Where is order {i}?")])
        for i in range(6)
    ]
    df = spark.createDataFrame(chats, rows).repartition(2)
    with (
        FakeLLM() as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        config = make_config(llm, chatdash, ledger={"path": str(tmp_path / "l.db")})
        cols = {"agent_col": "agent", "id_col": "id", "transcript_col": "messages"}
        dry = collect(enrich_dataframe(df, config, write=False, **cols))
        assert sorted(dry["status"]) == ["enriched"] * 6 and (dry["topic"] == "Account").all()
        assert sorted(dry["conversation_id"]) == [str(i) for i in range(6)]
        assert llm.count == 6 and chatdash.puts == []
        assert "Where is order 3?" in str(llm.requests)  # the messages reached the model
        done = collect(enrich_dataframe(df, config, **cols))
        assert sorted(done["status"]) == ["written"] * 6 and done["reused"].all()
        assert llm.count == 6 and len(written(chatdash)) == 6


def test_keys_can_stay_on_the_executors(spark, tmp_path):
    """keys_from_env: the driver's keys do not travel with the tasks; each executor uses its
    own OPENAI_API_KEY and CHATDASH_API_KEY."""
    with (
        FakeLLM() as llm,
        FakeChatDash(api_key=CHATDASH_KEY, put_schema=put_schema()) as chatdash,
    ):
        config = make_config(
            llm,
            chatdash,
            llm={"api_key": "sk-driver-only-0123456789"},
            chatdash={"api_key": "CD.driver-only-00000000000000000000"},
            ledger={"path": str(tmp_path / "l.db")},
        )
        df = frame(spark, [[("agent-1", f"k{i}", TRANSCRIPT)] for i in range(2)])
        out = collect(enrich_dataframe(df, config, keys_from_env=True))
        assert sorted(out["status"]) == ["written", "written"], out["error"].tolist()
        keys = {h.get("Authorization") or h.get("authorization") for h in llm.headers}
        assert keys == {f"Bearer {EXECUTOR_OPENAI_KEY}"}


def test_a_job_without_a_usable_shared_ledger_or_a_column_fails_before_any_task(spark, tmp_path):
    df = frame(spark, [[("agent-1", "c1", TRANSCRIPT)]])
    with FakeLLM() as llm:
        jobs = spark.sparkContext.statusTracker().getJobIdsForGroup()
        with pytest.raises(ConfigError, match="needs a ledger that every executor shares"):
            enrich_dataframe(df, make_config(llm))  # make_config: no ledger
        (tmp_path / "a-file").write_text("")
        config = make_config(llm, ledger={"path": str(tmp_path / "a-file" / "l.db")})
        with pytest.raises(ConfigError, match="cannot create the ledger"):
            enrich_dataframe(df, config)
        config = make_config(llm, ledger={"path": str(tmp_path / "l.db")})
        with pytest.raises(ConfigError, match=r"no column 'call_id'.*it has: agent_id"):
            enrich_dataframe(df, config, id_col="call_id")
        with pytest.raises(ConfigError, match="transcript_col=None fetches"):
            enrich_dataframe(df.drop("transcript"), config)
        keyless = config.model_copy(
            update={"chatdash": config.chatdash.model_copy(update={"api_key": None})}
        )
        with pytest.raises(ConfigError, match="CHATDASH_API_KEY is not set"):
            enrich_dataframe(df, keyless)
        assert spark.sparkContext.statusTracker().getJobIdsForGroup() == jobs  # no job ran
        assert llm.count == 0


def test_the_schema_follows_the_analysis():
    from enrich.config import load_config

    config = load_config(
        None,
        {
            "analysis": {
                "fields": [
                    {"name": "refund_amount", "type": "number", "required": False},
                    {"name": "callbacks", "type": "integer"},
                    {"name": "escalated", "type": "boolean"},
                    {"name": "products", "type": "list"},
                ]
            }
        },
        environ={},
    )
    s = {f.name: f.dataType for f in schema(config).fields}
    assert list(s) == result_columns(config)
    assert s["refund_amount"] == T.DoubleType() and s["callbacks"] == T.LongType()
    assert s["escalated"] == T.BooleanType() and s["products"] == T.StringType()
    assert s["cost"] == T.DoubleType() and s["prompt_tokens"] == T.LongType()
    assert s["stage"] == T.StringType() and s["is_success"] == T.BooleanType()


def test_importing_the_integration_does_not_import_spark_and_a_missing_extra_says_what_to_install():
    code = (
        "import sys; import enrich.integrations.spark as s\n"
        "assert 'pyspark' not in sys.modules and 'pandas' not in sys.modules, 'imported'\n"
        "sys.modules['pyspark'] = None\n"
        "try:\n    s.schema()\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "ENRICH_CONFIG": "none"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "ConfigError" in r.stdout and "pip install 'enrich[spark]'" in r.stdout
