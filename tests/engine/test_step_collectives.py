"""Blocking collectives per training step, counted around the real torch.distributed calls.

A step issues one collective from our code (the all-gather in `TrainStep` that agrees on loss
tokens, micro-batches, samples and the stop flag); every `train.log_every` steps the metrics
flush adds one gather; a checkpoint flushes first. DeepSpeed's own gradient traffic is not ours
(counted apart, and checked to be there so the attribution is not vacuous). With log_every > 1
the metrics and samples files hold exactly the records of a log_every = 1 run.
"""

from __future__ import annotations

from workers import collectives_worker, toy_config

from stts_train.testing import run_distributed_test

STEPS = 6


def _run(tmp_path, name: str, **train) -> list[dict]:
    cfg = toy_config(
        str(tmp_path / name),
        train={"num_steps": STEPS, **train},
        checkpoint={"every": 4, "at_end": False},
    )
    return run_distributed_test(collectives_worker, 2, (cfg,), timeout_s=300)


def _timeless(rows: list[dict]) -> list[dict]:
    """Metrics rows without the wall-clock and memory numbers (they differ run to run)."""
    varying = ("perf/", "data/wait_s", "mem/")
    return [{k: v for k, v in r.items() if not k.startswith(varying)} for r in rows]


def test_one_collective_per_step_and_metrics_every_log_every(tmp_path):
    every3 = _run(tmp_path, "every3", log_every=3)
    for rank in every3:
        ours = rank["ours"]
        for step in (1, 2, 5):
            assert ours[step] == ["all_gather"], (step, ours)
        for step in (3, 6):  # log steps: the step's all-gather, then the metrics flush
            assert ours[step] == ["all_gather", "gather_object"], (step, ours)
        # checkpoint step 4: the flush of step 4 comes before the checkpoint's own gathers
        assert ours[4][:2] == ["all_gather", "gather_object"] and len(ours[4]) > 2, ours[4]
        assert all(rank["theirs"][s] > 0 for s in range(1, STEPS + 1)), rank["theirs"]

    every1 = _run(tmp_path, "every1")
    for rank in every1:
        assert all(
            rank["ours"][s][:2] == ["all_gather", "gather_object"] for s in range(1, STEPS + 1)
        )
    ref, got = every1[0], every3[0]
    assert [r["step"] for r in got["metrics"]] == list(range(1, STEPS + 1))
    assert _timeless(got["metrics"]) == _timeless(ref["metrics"])
    assert got["keys"] == ref["keys"] and [r["step"] for r in got["keys"]] == list(
        range(1, STEPS + 1)
    )
    assert all(len(r["keys"]) == 2 and all(r["keys"]) for r in got["keys"])  # both DP ranks' keys
