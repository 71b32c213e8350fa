"""`stts-train eval CONFIG --checkpoint DIR`: video QA accuracy, evidence recall, efficiency."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="video QA accuracy, token-evidence recall and efficiency of a checkpoint",
        description=(
            "Evaluate a trained checkpoint (a run dir, a checkpoint step dir or a Hugging Face "
            "Molmo2 dir) on a built dataset. --pruner picks the token pruner: stts (the model's "
            "learned scorer), none, or a training-free method (visionzip, fastvid, holitom, "
            "stop_*, random, stts_heuristic, stts_easy)."
        ),
    )
    p.add_argument("config", help="experiment YAML (model shape, data settings)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir or HF Molmo2 dir")
    p.add_argument(
        "--data", default=None, help="dataset to evaluate (default: data.eval_path, else data.path)"
    )
    p.add_argument(
        "--pruner", default="stts", help="stts (default), none, or a training-free pruner"
    )
    p.add_argument(
        "--keep", type=float, default=None, help="keep ratio (default: model.stts.keep_ratio)"
    )
    p.add_argument(
        "--frames", type=int, default=None, help="frames sampled per video (test-time scaling)"
    )
    p.add_argument(
        "--attention-layer", type=int, default=-1, help="ViT block whose attention ranks tokens"
    )
    p.add_argument("--max-questions", type=int, default=None)
    p.add_argument("--out", default=None, help="write the summary JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stts_train.config import load_config
    from stts_train.eval.run import evaluate_checkpoint

    job = load_config(args.config, args.overrides)
    summary = evaluate_checkpoint(
        job,
        args.checkpoint,
        data_path=args.data,
        pruner=args.pruner,
        keep_ratio=args.keep,
        frames=args.frames,
        attention_layer=args.attention_layer,
        max_questions=args.max_questions,
    )
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not summary["questions"]:
        print("no questions evaluated", file=sys.stderr)
        return 1
    return 0
