"""`stts-train train CONFIG [key=value ...]`: train, resuming from the run dir's latest checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (launches parallel.num_ranks local ranks, or joins torchrun/Slurm)",
        description=(
            "Train with DeepSpeed ZeRO (+ megatron-core TP). Without a launcher environment, starts "
            "parallel.num_ranks local processes; under torchrun/deepspeed (RANK, WORLD_SIZE) or srun "
            "(SLURM_PROCID, SLURM_NTASKS) runs as that rank. Resumes from <run_dir>/checkpoints/latest. "
            "Exit codes: 0 done, 2 config/checkpoint error, 3 preempted (checkpoint written), "
            "4 non-finite loss."
        ),
    )
    p.add_argument("config", help="YAML config file (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.num_steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from stts_train.config import load_config
    from stts_train.parallel.launch import RankEnv, detect_env, free_port, spawn_local
    from stts_train.train.exit_codes import EXIT_CONFIG, EXIT_NONFINITE

    cfg = load_config(args.config, args.overrides)  # validate before starting any rank
    env = detect_env()
    if env is None and cfg.parallel.num_ranks > 1:
        return spawn_local(["train", args.config, *args.overrides], cfg.parallel.num_ranks)
    if env is None:
        env = RankEnv(0, 1, 0, "127.0.0.1", free_port())
    logging.basicConfig(
        level=logging.INFO if env.rank == 0 else logging.WARNING,
        format=f"[rank{env.rank}] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    from stts_train.errors import STTSError
    from stts_train.parallel.launch import init_distributed, shutdown_distributed
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


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
