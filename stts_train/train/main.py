"""The training entry point of one job (what `stts-train train CONFIG [key=value ...]` runs).

Without a launcher environment it starts `parallel.num_ranks` local ranks (each re-runs
`stts-train train` under RANK/WORLD_SIZE); under torchrun/deepspeed or srun it runs as that rank:
initialise torch.distributed, build the `Trainer`, `fit()`, tear down. Exit codes are those of
`train/exit_codes.py`; a config or checkpoint error and a non-finite loss exit the process at
once (`os._exit`), since peers may be inside a collective and a barrier would hang.
"""

from __future__ import annotations

import logging
import os
import sys

from stts_train.config import load_config
from stts_train.errors import STTSError
from stts_train.parallel.launch import (
    RankEnv,
    detect_env,
    free_port,
    init_distributed,
    shutdown_distributed,
    spawn_local,
)
from stts_train.train.exit_codes import EXIT_CONFIG, EXIT_NONFINITE


def train_main(config: str, overrides: list[str]) -> int:
    """Train the experiment `config` with dotted `overrides`, as every rank of this job."""
    cfg = load_config(config, overrides)  # validate before starting any rank
    env = detect_env()
    if env is None and cfg.parallel.num_ranks > 1:
        return spawn_local(["train", config, *overrides], cfg.parallel.num_ranks)
    if env is None:
        env = RankEnv(0, 1, 0, "127.0.0.1", free_port())
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"[rank{env.rank}] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    # after DS_ACCELERATOR: DeepSpeed picks its accelerator when first imported
    from stts_train.train.train_step import NonFiniteError
    from stts_train.train.trainer import Trainer

    init_distributed(env, cfg.parallel.backend)
    trainer = None
    try:
        trainer = Trainer(cfg)
        code = trainer.fit()
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        os._exit(EXIT_NONFINITE)  # peers may be mid-collective; do not wait at a barrier
    except STTSError as e:
        print(f"error: {e}", file=sys.stderr)
        os._exit(EXIT_CONFIG)
    if trainer is not None:
        trainer.close()
    shutdown_distributed()
    return code
