"""Sharded, atomic engine checkpoints on a local path or s3://.

Layout under the checkpoint dir (`checkpoint.dir`, default `<run_dir>/checkpoints`):

    step-00000012/        one committed checkpoint: DeepSpeed shards (every rank's files),
        meta.json         step, sizes, fingerprint, per-DP-rank data states, TP layout
        config.yaml       the resolved config
    latest                text file naming the newest committed step dir (moves last)
    .tmp-step-00000015/   a write in progress; never read, removed by the next save

Commit protocol: every rank writes its shards into `.tmp-<tag>/<tag>`; barrier; rank 0 writes
meta.json + config.yaml, fsyncs, renames the directory to `<tag>` (atomic on one filesystem) and
then replaces `latest` through a temporary file and `os.replace`. A crash at any point leaves the
previous `latest` and its directory untouched. On s3:// the shards are written to a local
staging dir, uploaded under `<tag>/`, and the `latest` object is written after every upload has
finished (object stores have no rename; a prefix without `latest` pointing at it is ignored).

The DeepSpeed client state holds step, tokens seen, every data-parallel rank's data state, every
rank's RNG state, the resolved config and the dataset fingerprint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from stts_train.errors import CheckpointError

FORMAT_VERSION = 1
LATEST = "latest"


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def is_remote(path: str) -> bool:
    return "://" in path


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointManager:
    """Save/find/load engine checkpoints (collective calls: every rank must call them).

    Args:
        root: checkpoint dir (local path or s3://bucket/prefix).
        keep_last: committed checkpoints to keep (older ones are deleted after a commit).
        staging: local scratch dir (used for s3:// uploads and downloads).
        rank, local_rank: for the filesystem work split (rank 0 commits; local rank 0 moves
            files between the node and object storage).
    """

    def __init__(self, root: str, keep_last: int, staging: str, rank: int, local_rank: int) -> None:
        self.root = root.rstrip("/")
        self.keep_last = max(1, keep_last)
        self.staging = Path(staging)
        self.rank, self.local_rank = rank, local_rank
        self.remote = is_remote(root)
        self._fs = None

    # -- storage ---------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            self._fs = fsspec.filesystem(self.root.split("://", 1)[0])
        return self._fs

    def latest_tag(self) -> str | None:
        """The committed tag `latest` names, or None (no checkpoint yet)."""
        if self.remote:
            path = f"{self.root}/{LATEST}"
            if not self.fs.exists(path):
                return None
            tag = self.fs.cat_file(path).decode().strip()
        else:
            path = Path(self.root) / LATEST
            if not path.is_file():
                return None
            tag = path.read_text().strip()
        return tag or None

    def committed_tags(self) -> list[str]:
        if self.remote:
            if not self.fs.exists(self.root):
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        else:
            root = Path(self.root)
            names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        return sorted(n for n in names if n.startswith("step-"))

    # -- save --------------------------------------------------------------------------------
    def save(
        self,
        engine: Any,
        step: int,
        client_state: dict[str, Any],
        meta: dict[str, Any],
        config_yaml: str,
        before_commit: Any = None,
    ) -> str:
        """Write, then commit, the checkpoint of `step`; returns its tag."""
        tag = step_tag(step)
        if self.remote:
            write_root = self.staging / f"save-{tag}"
        else:
            write_root = Path(self.root) / f".tmp-{tag}"
        if self.rank == 0:
            if write_root.exists():
                shutil.rmtree(write_root)
            write_root.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(
            str(write_root), tag=tag, client_state=client_state, save_latest=False
        )
        dist.barrier()
        tag_dir = write_root / tag
        if self.rank == 0:
            (tag_dir / "config.yaml").write_text(config_yaml)
            (tag_dir / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            for p in tag_dir.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        dist.barrier()
        if before_commit is not None:
            before_commit()
        if self.remote:
            self._commit_remote(tag, tag_dir)
        elif self.rank == 0:
            final = Path(self.root) / tag
            if final.exists():  # re-save of the same step (e.g. resumed and stopped again)
                shutil.rmtree(final)
            os.rename(tag_dir, final)
            _fsync_dir(Path(self.root))
            _write_atomic(Path(self.root) / LATEST, tag + "\n")
            shutil.rmtree(write_root, ignore_errors=True)
        dist.barrier()
        if self.rank == 0:
            self._prune(tag)
        dist.barrier()
        return tag

    def _commit_remote(self, tag: str, tag_dir: Path) -> None:
        if self.local_rank == 0:
            self.fs.put(str(tag_dir), f"{self.root}/{tag}", recursive=True)
        dist.barrier()
        if self.rank == 0:
            self.fs.pipe_file(f"{self.root}/{LATEST}", (tag + "\n").encode())
        if self.local_rank == 0:
            shutil.rmtree(tag_dir.parent, ignore_errors=True)

    def _prune(self, newest: str) -> None:
        tags = [t for t in self.committed_tags() if t <= newest]
        for old in tags[: -self.keep_last]:
            if self.remote:
                self.fs.rm(f"{self.root}/{old}", recursive=True)
            else:
                shutil.rmtree(Path(self.root) / old, ignore_errors=True)
        if not self.remote:  # leftovers of interrupted writes
            for p in Path(self.root).glob(".tmp-step-*"):
                shutil.rmtree(p, ignore_errors=True)

    # -- load --------------------------------------------------------------------------------
    def local_dir(self, tag: str) -> Path:
        """A local directory holding the committed checkpoint `tag` (downloads from s3://)."""
        if not self.remote:
            path = Path(self.root) / tag
            if not (path / "meta.json").is_file():
                raise CheckpointError(
                    f"checkpoint {path} has no meta.json; it is not a committed checkpoint"
                )
            return path
        dest = self.staging / f"load-{tag}"
        if self.local_rank == 0 and not (dest / tag / "meta.json").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            self.fs.get(f"{self.root}/{tag}", str(dest / tag), recursive=True)
        dist.barrier()
        return dest / tag

    def read_meta(self, tag: str) -> dict[str, Any]:
        return json.loads((self.local_dir(tag) / "meta.json").read_text())

    def load(self, engine: Any, tag: str) -> dict[str, Any]:
        """Load engine state (model, optimizer, scheduler) and return the client state."""
        path = self.local_dir(tag)
        load_path, client_state = engine.load_checkpoint(
            str(path.parent),
            tag=tag,
            load_module_strict=True,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {path}")
        return client_state or {}


def default_staging_dir(run_dir: str) -> str:
    """Node-local scratch shared by the ranks of one node (s3:// staging)."""
    return str(Path(run_dir) / ".staging")


def resolve_step_dir(path: str, scratch: Path) -> Path:
    """A local committed step dir for `path`: a step dir (`.../checkpoints/step-00000100`), a
    checkpoint root (its `latest` is followed) or a run dir (`<run_dir>/checkpoints/latest`).
    On s3:// the step dir is downloaded under `scratch`."""
    if is_remote(path):
        import fsspec

        fs = fsspec.filesystem(path.split("://", 1)[0])
        root = path.rstrip("/")
        if not fs.exists(f"{root}/meta.json"):
            for cand in (root, f"{root}/checkpoints"):
                if fs.exists(f"{cand}/{LATEST}"):
                    root = f"{cand}/{fs.cat_file(f'{cand}/{LATEST}').decode().strip()}"
                    break
        local = scratch / root.rsplit("/", 1)[-1]
        fs.get(root, str(local), recursive=True)
        path = str(local)
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "meta.json").is_file():
            return cand
        if (cand / LATEST).is_file():
            return cand / (cand / LATEST).read_text().strip()
    raise CheckpointError(
        f"{path} is not a checkpoint: no meta.json or {LATEST} pointer found; pass a step dir "
        "(.../checkpoints/step-00000100), a checkpoint root or a run dir"
    )
