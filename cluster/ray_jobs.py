"""Ray submission through the Ray Jobs API (`stts-train submit CONFIG --cluster ray --address A`).

The project checkout is uploaded as the job's working directory; the job's entrypoint is
`python -m cluster.ray_driver`, which starts one Ray actor per rank and runs the same training
entry point as Slurm and local runs. The config (with its `base:` chain resolved) travels in
the job's runtime environment, so a config file outside the checkout works too.

Authentication (Ray >= 2.52 token auth, on by default for new clusters in 2.59+): when the
cluster runs with `RAY_AUTH_MODE=token`, the client needs the same token. It is taken from
`RAY_AUTH_TOKEN`, else the file in `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token` (what
`ray get-auth-token --generate` writes), and sent as an `Authorization: Bearer` header. The
token is never printed or written into the job's config.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from stts_train.errors import STTSError
from stts_train.train.naming import RUN_NAME_ENV, git_sha7, run_name

DRIVER_ENTRYPOINT = "python -m cluster.ray_driver"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayJobError(STTSError):
    """The Ray job could not be submitted or did not succeed."""


def auth_token() -> str | None:
    """The Ray auth token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise RayJobError(
                f"RAY_AUTH_TOKEN_PATH={path} does not exist; point it at the cluster's token file"
            )
        return p.read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def client(address: str) -> Any:
    """A JobSubmissionClient for `address`, authenticated when a token is available."""
    from ray.job_submission import JobSubmissionClient

    if not address:
        raise RayJobError(
            "no Ray address: pass --address http://HEAD:8265 or set cluster.ray.address"
        )
    headers = {}
    token = auth_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _call(
        f"connecting to the Ray Jobs API at {address}",
        lambda: JobSubmissionClient(address, headers=headers or None),
    )


def new_job_tag() -> str:
    return f"ray{uuid.uuid4().hex[:8]}"


def build_spec(
    cfg: Any, config_yaml: str, overrides: list[str] | tuple[str, ...], job_tag: str = "ray"
) -> dict[str, Any]:
    """What ray_driver needs: argv with a `{config}` placeholder, ranks, resources, env."""
    r = cfg.cluster.ray
    env = {**cfg.cluster.env, **r.env}
    # The uploaded working dir has no .git, so the commit is resolved here, on the submit side.
    env.setdefault("STTS_JOB_ID", job_tag)
    env.setdefault(RUN_NAME_ENV, run_name(cfg.name, git_sha7(r.working_dir), job_tag))
    return {
        "argv": [*cfg.cluster.entry_argv, "{config}", *overrides],
        "config_name": cfg.name,
        "config_yaml": config_yaml,
        "num_workers": r.num_workers or cfg.parallel.num_ranks,
        "cpus_per_worker": r.cpus_per_worker,
        "gpus_per_worker": r.gpus_per_worker,
        "placement_strategy": r.placement_strategy,
        "env": env,
    }


def runtime_env(cfg: Any, spec: dict[str, Any]) -> dict[str, Any]:
    r = cfg.cluster.ray
    working_dir = Path(r.working_dir).resolve()
    if not (working_dir / "cluster" / "ray_driver.py").is_file():
        raise RayJobError(
            f"cluster.ray.working_dir={r.working_dir} ({working_dir}) is not the stts-train "
            "checkout (no cluster/ray_driver.py); run from the checkout or set "
            "cluster.ray.working_dir"
        )
    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(r.excludes),
        "env_vars": {"STTS_SUBMIT_SPEC": json.dumps(spec)},
    }
    if r.pip:
        env["pip"] = list(r.pip)
    return env


def submit(
    cfg: Any, config_yaml: str, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Any, str]:
    """Submit the job; returns (client, submission id)."""
    job_tag = new_job_tag()
    spec = build_spec(cfg, config_yaml, overrides, job_tag)
    c = client(cfg.cluster.ray.address)
    submission_id = run_name(cfg.name, git_sha7(cfg.cluster.ray.working_dir), job_tag)
    job_id = _call(
        "submitting the Ray job",
        lambda: c.submit_job(
            entrypoint=DRIVER_ENTRYPOINT,
            submission_id=submission_id,
            runtime_env=runtime_env(cfg, spec),
            entrypoint_num_cpus=0,
            metadata={"config": cfg.name},
        ),
    )
    return c, job_id


def stream_logs(c: Any, job_id: str, timeout_s: float = 0) -> None:
    """Print the job's logs as they arrive, until it ends (or `timeout_s` passes)."""

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        if timeout_s:
            asyncio.run(asyncio.wait_for(tail(), timeout_s))
        else:
            asyncio.run(tail())
    except TimeoutError:
        print(f"[stts] ray: stopped following logs after {timeout_s}s", flush=True)


def wait(c: Any, job_id: str, timeout_s: float = 0, poll_s: float = 1.0) -> str:
    """Block until the job reaches a terminal state; stops it on timeout. Returns the state name."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        state = str(c.get_job_status(job_id).value)
        if state in TERMINAL:
            return state
        if deadline is not None and time.monotonic() > deadline:
            c.stop_job(job_id)
            raise RayJobError(f"Ray job {job_id} still {state} after {timeout_s}s; stopped it")
        time.sleep(poll_s)


def _call(what: str, fn: Any, *args: Any) -> Any:
    """Run a JobSubmissionClient call; Ray's errors become RayJobError with a hint."""
    try:
        return fn(*args)
    except RayJobError:
        raise
    except Exception as e:  # ray raises RuntimeError / AuthenticationError / HTTP errors
        text = str(e)
        hint = ""
        if any(
            w in text.lower() for w in ("401", "403", "unauthorized", "forbidden", "authentication")
        ):
            hint = (
                " (the cluster requires its auth token: set RAY_AUTH_TOKEN_PATH to the token file "
                "the head was started with, or RAY_AUTH_TOKEN)"
            )
        raise RayJobError(
            f"{what} failed: {text.strip().splitlines()[-1] if text.strip() else e!r}{hint}"
        ) from e


def status(address: str, job_id: str) -> dict[str, str]:
    info = _call(f"Ray job status of {job_id}", client(address).get_job_info, job_id)
    return {
        "JobId": job_id,
        "JobState": str(info.status.value),
        "Message": info.message or "",
        "Entrypoint": info.entrypoint,
    }


def cancel(address: str, job_id: str) -> bool:
    return bool(_call(f"stopping Ray job {job_id}", client(address).stop_job, job_id))
