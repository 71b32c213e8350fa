"""data build / verify / stats, local and on a real S3 server (moto), CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import pytest

from pipelines.build import build
from pipelines.report import stats, verify
from pipelines.storage import Storage, StorageOptions
from stts_train.cli import main
from stts_train.errors import DataError

pytestmark = pytest.mark.slow  # local Ray (and a moto S3 server)


def test_build_local_layout_and_idempotent(built_local, source_dir, videos, spec):
    m = json.loads(open(os.path.join(built_local, "manifest.json")).read())
    assert m["num_samples"] == 10 and m["num_shards"] == 4
    assert [s["num_samples"] for s in m["shards"]] == [3, 3, 3, 1]
    names = set()
    with tarfile.open(os.path.join(built_local, "shard-000000.tar")) as tar:
        for info in tar:
            names.add(info.name)
            if not info.name.endswith(".json"):
                data = tar.extractfile(info).read()
                rec = json.loads(tar.extractfile(info.name.split(".")[0] + ".json").read())
                assert hashlib.sha256(data).hexdigest() == rec["video_sha256"]  # no re-encode
                assert rec["codec"] in ("h264", "vp9") and rec["num_frames"] > 0
    assert "s000.json" in names
    before = {f: os.stat(os.path.join(built_local, f)).st_mtime_ns for f in os.listdir(built_local)}
    again = build(str(source_dir), built_local, max_samples_per_shard=3, progress=False)
    after = {f: os.stat(os.path.join(built_local, f)).st_mtime_ns for f in os.listdir(built_local)}
    assert again["fingerprint"] == m["fingerprint"] and before == after  # nothing rewritten
    report = verify(built_local, spec, progress=False)
    assert report["ok"] and report["num_ok"] == 10
    st = stats(built_local)
    assert st["num_samples"] == 10 and set(st["codecs"]) == {"h264", "vp9"}


def test_rebuild_with_other_limits_leaves_no_stale_shards(source_dir, ray_local, tmp_path):
    dest = str(tmp_path / "ds")
    build(str(source_dir), dest, max_samples_per_shard=2, progress=False)
    assert len([f for f in os.listdir(dest) if f.endswith(".tar")]) == 5
    m = build(str(source_dir), dest, max_samples_per_shard=4, progress=False)
    tars = sorted(f for f in os.listdir(dest) if f.endswith(".tar"))
    assert len(tars) == m["num_shards"] == 3 and m["num_samples"] == 10


def test_build_s3_and_cli(source_dir, ray_local, s3_bucket, moto_url, spec, capsys):
    dest = f"s3://{s3_bucket}/video/ds"
    rc = main(
        [
            "data",
            "build",
            str(source_dir),
            dest,
            "--max-samples-per-shard",
            "4",
            "--num-probe-workers",
            "2",
            "--s3-endpoint-url",
            moto_url,
            "--no-progress",
        ]
    )
    assert rc == 0
    st = Storage(dest, StorageOptions(endpoint_url=moto_url))
    assert {"manifest.json", "shard-000000.tar", "shard-000002.idx.json"} <= set(st.list())
    assert main(["data", "verify", dest, "--s3-endpoint-url", moto_url, "--no-progress"]) == 0
    assert main(["data", "stats", dest, "--s3-endpoint-url", moto_url]) == 0
    out = capsys.readouterr().out
    assert "10/10 samples decoded" in out and '"num_samples": 10' in out
    assert "testing" not in out  # credentials never printed


def test_cli_errors_name_the_file(tmp_path, videos, ray_local, capsys):
    src = tmp_path / "src"
    src.mkdir()
    assert main(["data", "build", str(src), str(tmp_path / "o"), "--no-progress"]) == 2
    assert str(src) in capsys.readouterr().err
    (src / "bad.mp4").write_bytes(b"not a video at all" * 10)
    (src / "annotations.jsonl").write_text(
        json.dumps({"video": "bad.mp4", "question": "q", "answer": "a"}) + "\n"
    )
    assert main(["data", "build", str(src), str(tmp_path / "o"), "--no-progress"]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    (src / "annotations.jsonl").write_text(
        json.dumps({"video": "missing.mp4", "question": "q", "answer": "a"}) + "\n"
    )
    with pytest.raises(DataError, match="missing.mp4"):
        build(str(src), str(tmp_path / "o"), progress=False)
    for cmd in (
        ["data", "--help"],
        ["data", "build", "--help"],
        ["data", "verify", "--help"],
        ["data", "stats", "--help"],
    ):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
