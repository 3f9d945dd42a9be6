"""A lake on S3 (the ``s3`` fixture: moto's standalone server, a real HTTP S3 API): every Lake
operation, the DuckDB catalog and its served reads, concurrent writers, and clear errors for
a missing bucket, an unreachable endpoint, missing or refused credentials."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import threading

import boto3
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.errors import InvalidInputError, TransientError
from headwater.lake import objectstore, sql
from headwater.lake.store import Lake
from headwater.settings import describe, load
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, start_s3

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def hourly(ds: list[dt.date], events: list[int]) -> pa.Table:
    return pa.table({"events": pa.array(events, pa.int64()), "ds": pa.array(ds, pa.date32())})


@pytest.fixture
def lake(s3) -> Lake:
    return Lake(f"s3://{s3.create_bucket()}/lake", s3.storage_options())


def s3_keys(s3, bucket: str, prefix: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name=REGION)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


# -- settings ---------------------------------------------------------------------------------
def test_settings_become_delta_rs_options_and_a_pyarrow_filesystem(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert objectstore.storage_options(load(home=tmp_path)) is None  # a local lake
    s = load(home=tmp_path, **{"lake.root": "s3://b/lake", "lake.s3_endpoint": "http://127.0.0.1:9000", "lake.s3_region": "eu-west-1",
                               "lake.s3_access_key_id": "AKIDEXAMPLE", "lake.s3_secret_access_key": "s3cr3t-value"})
    options = objectstore.storage_options(s)
    assert options == {"conditional_put": "etag", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true",
                       "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}
    fs = pickle.loads(pickle.dumps(objectstore.s3_filesystem(options)))  # what travels to an executor
    state = fs.__reduce__()[1][0]
    assert (state["endpoint_override"], state["region"], state["access_key"]) == ("http://127.0.0.1:9000", "eu-west-1", "AKIDEXAMPLE")
    # the single-writer mode, and an endpoint from the AWS SDKs' variable (pyarrow ignores it)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9000")
    s = load(home=tmp_path, **{"lake.root": "s3://b/lake", "lake.s3_commit": "unsafe_rename"})
    assert objectstore.storage_options(s) == {"AWS_S3_ALLOW_UNSAFE_RENAME": "true", "AWS_ENDPOINT_URL": "https://minio.example:9000"}


def test_secrets_are_masked_where_settings_are_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
    (tmp_path / "headwater.toml").write_text('[lake]\nroot = "s3://b/lake"\ns3_access_key_id = "AKIDEXAMPLE"\ns3_secret_access_key = "s3cr3t-value"\n')
    shown = {r["key"]: r["value"] for r in describe(load())}
    assert shown["lake.s3_access_key_id"] == shown["lake.s3_secret_access_key"] == "**********"
    out = CliRunner().invoke(cli, ["config", "show", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert "s3cr3t-value" not in out.output and "AKIDEXAMPLE" not in out.output and "s3://b/lake" in out.output
    # an invalid value is named without being echoed
    (tmp_path / "headwater.toml").write_text('[lake]\ns3_secret_access_key = 42\ns3_commit = "dynamodb"\n')
    with pytest.raises(InvalidInputError) as e:
        load()
    assert "42" not in str(e.value)
    (tmp_path / "headwater.toml").write_text('[lake]\ns3_commit = "dynamodb"\n')
    with pytest.raises(InvalidInputError, match="lake.s3_commit: Input should be 'conditional_put' or 'unsafe_rename'"):
        load()


def test_an_s3_lake_without_a_commit_mode_is_refused_naming_the_setting():
    with pytest.raises(InvalidInputError, match="lake.s3_commit") as e:
        Lake("s3://bucket/lake", {"AWS_REGION": "us-east-1"})
    assert e.value.field == "lake.s3_commit"
    Lake("s3://bucket/lake", {"aws_conditional_put": "etag"})  # object_store's spellings are accepted
    Lake("s3://bucket/lake", {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})


# -- the lake on S3 ---------------------------------------------------------------------------
def test_writes_reads_and_tables_on_s3(lake):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    lake.append_once("gold.events_hourly", hourly([D1, D2], [2, 3]), app_id="app", batch_id=7)
    lake.append("realtime.per_minute", pa.table({"n": [1]}))
    lake.overwrite_partitions("silver.evt_signed_up", hourly([D1], [1]), D1, D1)
    lake.overwrite_partitions("silver.evt_signed_up", hourly([D1], [5]), D1, D1)
    lake.upsert_once("gold.events_hourly", pa.table({"events": pa.array([3], pa.int64()), "ds": pa.array([D2], pa.date32()),
                                                     "_delete": [True]}), ("ds",), app_id="app", batch_id=8)
    assert lake.tables() == ["gold.events_hourly", "realtime.per_minute", "silver.evt_signed_up"]
    assert lake.committed_batch("gold.events_hourly", "app") == 8
    assert lake.ds_range("gold.events_hourly") == (D1, D1)
    data = lake.dataset("gold.events_hourly")
    assert isinstance(data, pads.FileSystemDataset)  # the fast path: files read by pyarrow's S3 client
    assert sorted(data.to_table()["events"].to_pylist()) == [1, 2]
    assert lake.dataset("silver.evt_signed_up").to_table()["events"].to_pylist() == [5]
    assert sql.query(lake, "SELECT sum(events) AS n FROM gold.events_hourly WHERE ds = DATE '2024-03-01'")["n"].to_pylist() == [3]


def test_the_table_filesystem_is_picklable_and_rooted_at_the_table(lake, s3):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    fs = pickle.loads(pickle.dumps(lake.filesystem("gold.events_hourly")))  # as it travels to a Spark executor
    adds = lake.add_actions("gold.events_hourly")["path"].to_pylist()
    assert [i.type for i in fs.get_file_info(adds)] == [pafs.FileType.File]
    pq.write_table(hourly([D2], [9]), "ds=2024-03-02/part-executor.parquet", filesystem=fs)  # a writer outside delta-rs
    bucket, prefix = lake.root.removeprefix("s3://").split("/", 1)
    assert "ds=2024-03-02/part-executor.parquet" in s3_keys(s3, bucket, f"{prefix}/gold/events_hourly/")
    assert lake.hadoop_uri("gold.events_hourly") == f"s3a://{bucket}/{prefix}/gold/events_hourly"


def test_compact_cluster_delete_and_vacuum_on_s3(lake, s3):
    for i in range(6):
        lake.append("gold.events_hourly", hourly([D1, D2], [i, 10 + i]))
    assert lake.compact("gold.events_hourly") == {"files_removed": 12, "files_added": 2}
    assert lake.cluster("gold.events_hourly", ("events",), [D1]) == {"files_removed": 1, "files_added": 1}
    assert lake.delete("gold.events_hourly", "events >= 14") == 2
    bucket, prefix = lake.root.removeprefix("s3://").split("/", 1)
    before = s3_keys(s3, bucket, f"{prefix}/gold/events_hourly/")
    removed = lake.vacuum("gold.events_hourly", 0)
    assert len(removed) == 14 and all(p.startswith("ds=") for p in removed)  # relative to the table
    after = s3_keys(s3, bucket, f"{prefix}/gold/events_hourly/")
    assert before - after == set(removed)
    assert sorted(lake.dataset("gold.events_hourly").to_table()["events"].to_pylist()) == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]
    assert lake.vacuum("gold.events_hourly", 0) == []


def test_concurrent_writers_commit_by_conditional_put_without_losing_a_commit(lake):
    lake.append("gold.events_hourly", hourly([D1], [0]))
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        mine = Lake(lake.root, lake.storage_options)  # a writer of its own, as another process would be
        try:
            for i in range(5):
                mine.append("gold.events_hourly", hourly([D1], [100 * w + i]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lake.version("gold.events_hourly") == 20  # every commit took a version of its own
    assert lake.row_count("gold.events_hourly") == 21


def test_served_reads_see_each_commit(lake):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    first = sql.version(lake, "gold.events_hourly")
    assert sql.read(lake, "SELECT sum(events) AS n FROM gold.events_hourly")["n"].to_pylist() == [1]
    assert sql.version(lake, "gold.events_hourly") == first
    lake.append("gold.events_hourly", hourly([D1], [2]))
    assert sql.version(lake, "gold.events_hourly")[0] == first[0] + 1
    assert sql.read(lake, "SELECT sum(events) AS n FROM gold.events_hourly")["n"].to_pylist() == [3]
    assert sql.version(lake, "gold.sessions") is None


# -- failures ----------------------------------------------------------------------------------
def test_a_missing_bucket_and_an_unreachable_endpoint_are_named(s3):
    missing = Lake("s3://no-such-bucket/lake", s3.storage_options())
    with pytest.raises(InvalidInputError, match="bucket of lake.root does not exist") as e:
        missing.exists("bronze.events")
    assert e.value.field == "lake.root"
    down = Lake(f"s3://{s3.create_bucket()}/lake", {**s3.storage_options(), "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    for call in (lambda: down.exists("bronze.events"), down.tables, lambda: down.append("realtime.per_minute", pa.table({"n": [1]})),
                 lambda: sql.query(down, "SELECT * FROM gold.sessions"), lambda: sql.read(down, "SELECT * FROM gold.sessions")):
        with pytest.raises(TransientError, match="cannot be reached") as e:
            call()
        assert e.value.field == "lake.s3_endpoint" and "\n" not in str(e.value)


def test_missing_credentials_are_named(s3):
    options = {k: v for k, v in s3.storage_options().items() if "KEY" not in k}
    # Without keys the SDKs end at the instance metadata service: point it at a closed port.
    lake = Lake(f"s3://{s3.create_bucket()}/lake", {**options, "AWS_METADATA_ENDPOINT": "http://127.0.0.1:1"})
    with pytest.raises(InvalidInputError, match="no credentials") as e:
        lake.append("realtime.per_minute", pa.table({"n": [1]}))
    assert e.value.field == "lake.s3_access_key_id"


@pytest.fixture(scope="module")
def s3_with_auth():
    """A moto server that checks signatures (after its first 3 requests, which create the
    IAM user, policy and key used here): ``(server, access key id, secret)``."""
    server = start_s3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=REGION,
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        iam.create_user(UserName="lake")
        iam.put_user_policy(UserName="lake", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="lake")["AccessKey"]
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def test_refused_credentials_are_named_and_never_shown(s3_with_auth, tmp_path, monkeypatch):
    server, key_id, secret = s3_with_auth
    boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION, aws_access_key_id=key_id,
                 aws_secret_access_key=secret).create_bucket(Bucket="authlake")
    good = {**server.storage_options(), "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    Lake("s3://authlake/lake", good).append("realtime.per_minute", pa.table({"n": [1]}))
    wrong = "wrong-secret-0123456789"
    bad = Lake("s3://authlake/lake", {**good, "AWS_SECRET_ACCESS_KEY": wrong})
    for call in (lambda: bad.exists("realtime.per_minute"), lambda: bad.append("realtime.per_minute", pa.table({"n": [2]})),
                 lambda: bad.dataset("realtime.per_minute")):
        with pytest.raises(InvalidInputError, match="refused the credentials") as e:
            call()
        assert e.value.field == "lake.s3_access_key_id" and wrong not in str(e.value)
    # the CLI: one line, exit code 2, no traceback, no secret
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
    (tmp_path / "headwater.toml").write_text(
        f'[lake]\nroot = "s3://authlake/lake"\ns3_endpoint = "{server.endpoint}"\ns3_region = "{REGION}"\n'
        f's3_access_key_id = "{key_id}"\ns3_secret_access_key = "{wrong}"\n')
    out = CliRunner().invoke(cli, ["query", "SELECT * FROM realtime.per_minute"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "refused the credentials" in out.output and wrong not in out.output and key_id not in out.output
