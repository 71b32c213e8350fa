"""MovingDigits-QA: a small video QA benchmark generated from real assets that ship in packages.

Each clip is a static crop of a real photo (scikit-image / scikit-learn sample images) with one
real handwritten digit (scikit-learn's digits, one colour per class) moving across part of the
clip, encoded to H.264 with Debian's ffmpeg. Questions:
- `which`: "Which digit moves across the video?" (4 choices: digits);
- `direction`: "Which way does the digit move?" (left / right / up / down).
The answer depends only on the frames and patches where the digit is, and every annotation
carries that ground truth (`evidence.boxes`: per source frame [t, x0, y0, x1, y1] in pixels), so
evaluation can score how many of the needed tokens a pruner kept (evidence recall).

Output: SRC folder for `stts-train data build`: `clips/*.mp4` + `annotations.jsonl` (+ splits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIRECTIONS = ("left", "right", "up", "down")
# One colour per digit class (RGB), far from each other and from typical photo colours.
PALETTE = np.array(
    [
        [255, 40, 40],
        [40, 255, 40],
        [60, 90, 255],
        [255, 255, 40],
        [255, 40, 255],
        [40, 255, 255],
        [255, 140, 0],
        [150, 60, 255],
        [255, 255, 255],
        [0, 0, 0],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class BenchmarkSpec:
    num_clips: int = 240
    size: int = 126
    """Frame side in pixels (the model's image size, so decoding needs no resize)."""
    source_frames: int = 16
    fps: float = 8.0
    digit_size: int = 40
    seed: int = 0
    question_types: tuple[str, ...] = ("which", "direction")


def _backgrounds(size: int) -> list[np.ndarray]:
    """Real photos from the scikit-image and scikit-learn wheels (offline), as uint8 RGB."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = [skd.astronaut(), skd.coffee(), skd.chelsea(), skd.rocket()] + list(
        load_sample_images().images
    )
    return [p[..., :3].astype(np.uint8) for p in photos if min(p.shape[:2]) >= size]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upscale of an 8x8 digit to size x size (numpy only)."""
    src = mask.shape[0]
    coords = (np.arange(size) + 0.5) * src / size - 0.5
    c0 = np.clip(np.floor(coords).astype(int), 0, src - 1)
    c1 = np.clip(c0 + 1, 0, src - 1)
    w = np.clip(coords - c0, 0, 1)
    rows = mask[c0] * (1 - w)[:, None] + mask[c1] * w[:, None]
    return rows[:, c0] * (1 - w)[None, :] + rows[:, c1] * w[None, :]


def _trajectory(rng: np.random.Generator, direction: str, size: int, digit: int, steps: int):
    lo, hi = 0, size - digit
    span = rng.uniform(0.55, 0.9) * (hi - lo)
    start_main = rng.uniform(lo, hi - span)
    cross = rng.uniform(lo, hi)
    main = np.linspace(start_main, start_main + span, steps)
    if direction in ("left", "up"):
        main = main[::-1]
    if direction in ("left", "right"):
        return np.stack([main, np.full(steps, cross)], 1)  # (x, y)
    return np.stack([np.full(steps, cross), main], 1)


def render_clip(spec: BenchmarkSpec, index: int, backgrounds, digit_images, digit_labels):
    """Frames (T, H, W, 3) uint8 and the clip's ground truth."""
    rng = np.random.default_rng([spec.seed, index])
    photo = backgrounds[rng.integers(len(backgrounds))]
    y0 = rng.integers(0, photo.shape[0] - spec.size + 1)
    x0 = rng.integers(0, photo.shape[1] - spec.size + 1)
    background = photo[y0 : y0 + spec.size, x0 : x0 + spec.size].astype(np.float32)
    digit = int(rng.integers(10))
    candidates = np.flatnonzero(digit_labels == digit)
    # opaque strokes (the 8x8 digits are faint): the digit's colour is the signal to learn
    mask = np.clip(1.6 * _resize_mask(digit_images[rng.choice(candidates)], spec.digit_size), 0, 1)[
        ..., None
    ]
    direction = DIRECTIONS[int(rng.integers(4))]
    t = spec.source_frames
    visible = max(int(round(t * rng.uniform(0.6, 1.0))), 4)
    t_on = int(rng.integers(0, t - visible + 1))
    path = _trajectory(rng, direction, spec.size, spec.digit_size, visible)
    frames, boxes = [], []
    for f in range(t):
        frame = background.copy()
        if t_on <= f < t_on + visible:
            x, y = (int(round(v)) for v in path[f - t_on])
            region = frame[y : y + spec.digit_size, x : x + spec.digit_size]
            frame[y : y + spec.digit_size, x : x + spec.digit_size] = (
                region * (1 - mask) + PALETTE[digit] * mask
            )
            boxes.append([f, x, y, x + spec.digit_size, y + spec.digit_size])
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames), {
        "digit": digit,
        "direction": direction,
        "boxes": boxes,
        "t_on": t_on,
        "visible": visible,
    }


def encode_h264(frames: np.ndarray, fps: float, out: Path) -> None:
    """Raw RGB frames -> H.264 mp4 through ffmpeg (yuv420p, near-lossless)."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not installed; run cluster/setup.sh (apt-get install ffmpeg)")
    t, h, w, _ = frames.shape
    cmd = [
        "ffmpeg",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        f"{fps}",
        "-i",
        "-",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-crf",
        "16",
        "-pix_fmt",
        "yuv420p",
        "-g",
        str(t),
        str(out),
    ]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)


def questions_for(truth: dict, rng: np.random.Generator) -> list[dict]:
    digit, direction = truth["digit"], truth["direction"]
    others = [d for d in range(10) if d != digit]
    choices = sorted([digit, *rng.choice(others, 3, replace=False).tolist()])
    base = {"boxes": truth["boxes"], "digit": digit, "direction": direction}
    return [
        {
            "question": "Which digit moves across the video?",
            "choices": [str(c) for c in choices],
            "answer": str(digit),
            "evidence": {**base, "qtype": "which"},
        },
        {
            "question": "Which way does the digit move?",
            "choices": list(DIRECTIONS),
            "answer": direction,
            "evidence": {**base, "qtype": "direction"},
        },
    ]


def _render_and_encode(args) -> tuple[int, str, list[dict]]:
    spec, index, out_dir, split = args
    state = _worker_assets(spec.size)
    frames, truth = render_clip(spec, index, *state)
    name = f"clips/digits_{index:05d}.mp4"
    encode_h264(frames, spec.fps, Path(out_dir) / split / name)
    rng = np.random.default_rng([spec.seed, index, 1])
    rows = []
    for q in questions_for(truth, rng):
        if q["evidence"]["qtype"] in spec.question_types:
            rows.append({"id": f"digits_{index:05d}_{q['evidence']['qtype']}", "video": name, **q})
    return index, split, rows


_ASSETS: dict[int, tuple] = {}


def _worker_assets(size: int) -> tuple:
    if size not in _ASSETS:
        _ASSETS[size] = (_backgrounds(size), *_digits())
    return _ASSETS[size]


def generate(
    out_dir: str | Path,
    spec: BenchmarkSpec = BenchmarkSpec(),
    *,
    eval_fraction: float = 0.2,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Write `train/` and `eval/` source folders (clips + annotations.jsonl) under `out_dir`.

    Clips are rendered and encoded in `workers` processes (default: every core); the output is
    identical for any worker count (each clip is seeded by (seed, index))."""
    import multiprocessing as mp
    import os

    from tqdm import tqdm

    out_dir = Path(out_dir)
    num_eval = max(1, int(round(spec.num_clips * eval_fraction)))
    for split in ("train", "eval"):
        (out_dir / split / "clips").mkdir(parents=True, exist_ok=True)
    jobs = [
        (spec, i, str(out_dir), "eval" if i < num_eval else "train") for i in range(spec.num_clips)
    ]
    results: dict[int, tuple[str, list[dict]]] = {}
    workers = workers or os.cpu_count() or 1
    with mp.get_context("spawn").Pool(workers) as pool:
        for index, split, rows in tqdm(
            pool.imap_unordered(_render_and_encode, jobs, chunksize=4),
            total=len(jobs),
            desc="generate clips",
            unit="clip",
            disable=not progress,
        ):
            results[index] = (split, rows)
    counts = {"train": 0, "eval": 0}
    for split in ("train", "eval"):
        with (out_dir / split / "annotations.jsonl").open("w") as f:
            for index in sorted(results):
                if results[index][0] == split:
                    for row in results[index][1]:
                        f.write(json.dumps(row) + "\n")
                        counts[split] += 1
    info = {
        "spec": {**spec.__dict__, "question_types": list(spec.question_types)},
        "questions": counts,
        "frame_size": spec.size,
    }
    (out_dir / "benchmark.json").write_text(json.dumps(info, indent=1))
    return info
