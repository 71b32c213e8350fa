"""Trainer: resume, the step loop, checkpoint cadence, preemption, teardown.

    trainer = Trainer(cfg)          # torch.distributed already initialised (see parallel.launch)
    exit_code = trainer.fit()

The math of one step lives in `train_step.TrainStep`; the wrapping in `parallel.parallelize`.
Build phases are separate methods: layout -> engine -> data -> checkpointing -> metrics.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from stts_train.checkpoint.manager import (
    FORMAT_VERSION,
    CheckpointManager,
    default_staging_dir,
    rng_state,
    set_rng_state,
)
from stts_train.config.base import to_dict
from stts_train.config.job import JobConfig, dump_config
from stts_train.data.batch import MicroBatch
from stts_train.errors import CheckpointError
from stts_train.parallel.dims import ParallelDims
from stts_train.parallel.parallelize import ModelFn, parallelize
from stts_train.train import faults
from stts_train.train.exit_codes import EXIT_OK, EXIT_PREEMPTED
from stts_train.train.metrics import MetricsProcessor, default_peak_flops
from stts_train.train.naming import current_run_name
from stts_train.train.optim import build_optimizer_and_scheduler
from stts_train.train.signals import StopFlag
from stts_train.train.train_step import NonFiniteError, TrainStep

log = logging.getLogger(__name__)


class DataSource(Protocol):
    """What the trainer needs from a data stream (synthetic or the real planner output)."""

    fingerprint: str
    can_reshard: bool

    def next_microbatches(self, step: int) -> list[MicroBatch]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def build_data_source(cfg: JobConfig, dims: ParallelDims, **kwargs: Any) -> DataSource:
    kind = cfg.train.data_source
    if kind == "auto":
        kind = "stream" if cfg.data.path else "synthetic"
    if kind == "synthetic":
        from stts_train.data.synthetic import SyntheticSource

        return SyntheticSource(
            cfg.model,
            cfg.train.synthetic,
            cfg.train.seed,
            dims.dp_rank,
            dims.dp,
            cfg.train.micro_batches_per_step,
            **kwargs,
        )
    from stts_train.data.loader import PipelineSource

    return PipelineSource(cfg, dims.dp_rank, dims.dp, group=dims.dp_group)


class Trainer:
    """Owns one training run on this rank.

    Args:
        cfg: the resolved job config.
        model_fn: model class/callable, called as `model_fn(cfg.model, factory)` (default:
            `Molmo2VLM`).
        data_source: a ready data source (default: built from the config).
        data_kwargs: extra keyword arguments for the default data source (tests).
    """

    def __init__(
        self,
        cfg: JobConfig,
        model_fn: ModelFn | None = None,
        data_source: DataSource | None = None,
        data_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.step = 0
        self.tokens_seen = 0
        self.samples_seen = 0
        # DeepSpeed still calls torch.distributed's deprecated *_tensor collectives every step.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
        )
        self.run_dir = Path(cfg.run_dir)
        self.name = current_run_name(cfg.name)
        self._build_layout()
        self._build_engine(model_fn)
        self._build_data(data_source, data_kwargs or {})
        self._build_checkpointing()
        self._build_metrics()
        self.stop = StopFlag()

    # -- build phases ---------------------------------------------------------------------
    def _build_layout(self) -> None:
        self.dims = ParallelDims(tp=self.cfg.parallel.tensor_parallel)
        self.rank0 = self.dims.is_rank0
        if self.rank0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            log.info("run %s: %s, run dir %s", self.name, self.dims.describe(), self.run_dir)
        dist.barrier()

    def _build_engine(self, model_fn: ModelFn | None) -> None:
        optimizer_fn = functools.partial(build_optimizer_and_scheduler, self.cfg)
        self.par = parallelize(self.cfg, self.dims, optimizer_fn, model_fn)
        self.engine = self.par.engine
        self.device = self.engine.device if hasattr(self.engine, "device") else torch.device("cpu")
        bf16 = self.cfg.parallel.precision == "bf16"
        self.train_step = TrainStep(
            self.engine,
            self.dims,
            self.cfg.model.stts.aux_loss_weight,
            torch.device(self.device),
            torch.bfloat16 if bf16 else torch.float32,
        )

    def _build_data(self, data_source: DataSource | None, data_kwargs: dict[str, Any]) -> None:
        self.data = data_source or build_data_source(self.cfg, self.dims, **data_kwargs)

    def _build_checkpointing(self) -> None:
        c = self.cfg.checkpoint
        root = c.dir or str(self.run_dir / "checkpoints")
        self.ckpt = CheckpointManager(
            root,
            c.keep_last,
            default_staging_dir(str(self.run_dir)),
            self.dims.rank,
            int(os.environ.get("LOCAL_RANK", "0")),
        )

    def _build_metrics(self) -> None:
        m, dev = self.cfg.metrics, torch.device(self.device)
        self.metrics = MetricsProcessor(
            self.dims,
            str(self.run_dir),
            wandb_mode=m.wandb_mode,
            wandb_project=m.wandb_project,
            run_name=self.name,
            config=to_dict(self.cfg),
            jsonl=m.jsonl,
            progress_bar=m.progress_bar,
            num_steps=self.cfg.train.num_steps,
            param_counts=self.par.param_counts,
            vit_layers=self.cfg.model.vit.num_layers,
            peak_flops=m.peak_flops_per_device
            or default_peak_flops(dev, self.cfg.parallel.precision),
            max_llm_tokens=self.cfg.packing.max_llm_tokens,
            device=dev,
            log_every=self.cfg.train.log_every,
        )

    # -- checkpoints ----------------------------------------------------------------------
    def _gather_dp(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.dims.dp
        dist.all_gather_object(out, obj, group=self.dims.dp_group)
        return out

    def save_checkpoint(self) -> str:
        # every step up to this one is in samples.jsonl before the checkpoint commits (exactly-once
        # accounting after a resume)
        self.metrics.flush()
        data_states = self._gather_dp(self.data.state_dict())
        rng_states: list[Any] = [None] * self.dims.world_size
        dist.all_gather_object(rng_states, rng_state())
        config_yaml = dump_config(self.cfg)
        meta = {
            "version": FORMAT_VERSION,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "samples_seen": self.samples_seen,
            "dp_size": self.dims.dp,
            "tp_size": self.dims.tp,
            "world_size": self.dims.world_size,
            "zero_stage": self.cfg.parallel.zero_stage,
            "precision": self.cfg.parallel.precision,
            "fingerprint": self.data.fingerprint,
            "data_states": data_states,
            "tp_layout": self.par.tp_layout,
            "run_name": self.name,
        }
        client_state = {**meta, "rng_states": rng_states, "config": config_yaml}
        tag = self.ckpt.save(
            self.engine,
            self.step,
            client_state,
            meta,
            config_yaml,
            before_commit=lambda: faults.maybe_kill_in_checkpoint(self.step),
        )
        if self.rank0:
            log.info("checkpoint %s committed", tag)
        return tag

    def maybe_resume(self) -> bool:
        """Resume from the checkpoint dir's `latest`, after validating it against this run."""
        if not self.cfg.checkpoint.resume:
            return False
        tag = self.ckpt.latest_tag()
        if tag is None:
            return False
        meta = self.ckpt.read_meta(tag)
        self._validate_resume(meta, tag)
        client = self.ckpt.load(self.engine, tag)
        self.step = int(client["step"])
        self.tokens_seen = int(client["tokens_seen"])
        self.samples_seen = int(client.get("samples_seen", 0))
        states = client["data_states"]
        if len(states) != self.dims.dp:
            states = type(self.data).reshard_states(states, self.dims.dp)  # type: ignore[attr-defined]
        self.data.load_state_dict(states[self.dims.dp_rank])
        if client.get("world_size") == self.dims.world_size:
            set_rng_state(client["rng_states"][self.dims.rank])
        self.metrics.truncate_after(self.step)
        if self.rank0:
            log.info("resumed from %s at step %d", tag, self.step)
        return True

    def _validate_resume(self, meta: dict[str, Any], tag: str) -> None:
        where = f"checkpoint {self.ckpt.root}/{tag}"
        if meta.get("tp_size") != self.dims.tp:
            raise CheckpointError(
                f"{where} was written with tensor_parallel={meta.get('tp_size')}, this run uses "
                f"{self.dims.tp}; resume with parallel.tensor_parallel={meta.get('tp_size')} or "
                "export the checkpoint and start a new run from it"
            )
        if meta.get("dp_size") != self.dims.dp:
            ok = self.cfg.checkpoint.allow_dp_change and getattr(self.data, "can_reshard", False)
            if not ok:
                raise CheckpointError(
                    f"{where} was written with data-parallel size {meta.get('dp_size')}, this run "
                    f"has {self.dims.dp}; the data stream order would change. Relaunch with "
                    f"{meta.get('dp_size')} data-parallel ranks, or set "
                    "checkpoint.allow_dp_change=true (needs a data stream that can reshard)"
                )
        if (
            meta.get("fingerprint") != self.data.fingerprint
            and not self.cfg.checkpoint.allow_fingerprint_change
        ):
            raise CheckpointError(
                f"{where} was trained on dataset {meta.get('fingerprint')!r}, the current data is "
                f"{self.data.fingerprint!r}; point data.path at the original data or set "
                "checkpoint.allow_fingerprint_change=true to continue on the new data"
            )

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to `train.num_steps`; returns an exit code (EXIT_OK or EXIT_PREEMPTED)."""
        cfg = self.cfg
        self.maybe_resume()
        self.stop.install()
        saved_at = self.step if self.step else -1
        try:
            while self.step < cfg.train.num_steps:
                t0 = time.perf_counter()
                mbs = self.data.next_microbatches(self.step)
                data_wait = time.perf_counter() - t0
                try:
                    # the step's one collective also agrees on the stop flag: a signal received
                    # during step N stops the run after step N+1
                    result = self.train_step(mbs, stop_requested=self.stop.requested)
                except NonFiniteError:
                    self.metrics.flush()  # every rank raises in the same step: keep the last rows
                    raise
                self.step += 1
                self.tokens_seen += result.loss_tokens
                self.samples_seen += result.num_samples
                step_s = time.perf_counter() - t0
                keys = [k for mb in mbs for k in mb.sample_keys]
                local_samples = sum(mb.num_samples for mb in mbs)
                self.metrics.record(
                    self.step,
                    result,
                    step_s,
                    data_wait,
                    local_samples,
                    keys,
                    getattr(self.data, "window_stats", None),
                )
                faults.maybe_kill_after_step(self.step)
                if result.stop or self.step % max(1, cfg.checkpoint.every) == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if result.stop:
                    if self.rank0:
                        log.warning(
                            "stop signal %s: checkpoint at step %d written, exiting",
                            self.stop.signum,
                            self.step,
                        )
                    return EXIT_PREEMPTED
            if cfg.checkpoint.at_end and saved_at != self.step:
                self.save_checkpoint()
            self.metrics.flush()
            return EXIT_OK
        finally:
            self.stop.uninstall()
            self.metrics.close()
            close_data = getattr(self.data, "close", None)
            if close_data is not None:
                close_data()  # stops the Ray decode actors of a real-data stream

    def close(self) -> None:
        self.dims.destroy()
