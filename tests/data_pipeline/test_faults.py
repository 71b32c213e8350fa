"""S3 answering 503 or stalling: retried with backoff, nothing lost or duplicated, no hang."""

from __future__ import annotations

import pytest

from pipelines.build import build
from pipelines.storage import StorageOptions, with_retries
from pipelines.stream import open_stream
from stts_train.errors import DataError

from .conftest import data_cfg


@pytest.mark.slow
def test_build_and_stream_through_faulty_s3(source_dir, ray_local, s3_bucket, fault_proxy, spec):
    proxy = fault_proxy(fail_every=4, stall_every=9, stall_s=2.5)
    opts = StorageOptions(
        endpoint_url=proxy.url,
        read_timeout_s=1.0,
        connect_timeout_s=1.0,
        max_attempts=6,
        backoff_base_s=0.05,
    )
    dest = f"s3://{s3_bucket}/faulty"
    m = build(str(source_dir), dest, max_samples_per_shard=4, storage_options=opts, progress=False)
    assert m["num_samples"] == 10
    cfg = data_cfg(
        dest,
        s3_endpoint_url=proxy.url,
        storage_read_timeout_s=1.0,
        storage_connect_timeout_s=1.0,
        storage_max_attempts=6,
        max_consecutive_failures=1,
    )
    got = [s.key for s in open_stream(cfg, spec, 0, 1)]
    assert sorted(got) == [f"s{i:03d}" for i in range(10)]
    ray_cfg = data_cfg(
        dest,
        s3_endpoint_url=proxy.url,
        storage_read_timeout_s=1.0,
        storage_connect_timeout_s=1.0,
        storage_max_attempts=6,
        loader="ray",
        num_decode_actors=2,
        actor_num_cpus=0.5,
        queue_size=3,
        max_consecutive_failures=1,
    )
    stream = open_stream(ray_cfg, spec, 0, 1)
    try:
        assert [s.key for s in stream] == got  # same order despite retries in the actors
        assert stream.metrics()["data/skipped_total"] == 0
    finally:
        stream.close()
    assert proxy.failed > 0 and proxy.stalled > 0


def test_dead_endpoint_fails_clearly_and_bounded():
    calls = []

    def boom():
        calls.append(1)
        raise ConnectionError("connection refused")

    opts = StorageOptions(max_attempts=3, backoff_base_s=0.01)
    with pytest.raises(DataError, match="after 3 attempts"):
        with_retries(boom, "read s3://b/x", opts)
    assert len(calls) == 3
    with pytest.raises(FileNotFoundError):  # not retried
        with_retries(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), "read", opts)
