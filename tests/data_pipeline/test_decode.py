"""Frame sampling, patch layout, decoder agreement and bad-bytes handling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.decode import decode_frames, sample_frame_indices, seed_for, to_patches
from pipelines.errors import SampleError
from pipelines.schema import DecodeSpec


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 3000),
    fps=st.floats(1, 120),
    max_frames=st.integers(1, 128),
    max_fps=st.floats(0.25, 30),
    off=st.floats(0, 0.999),
)
def test_sampling_properties(n, fps, max_frames, max_fps, off):
    idx = sample_frame_indices(n, fps, max_frames, max_fps, off)
    assert idx == sorted(set(idx)) and 1 <= len(idx) <= max_frames
    assert 0 <= idx[0] and idx[-1] < n
    step = max(1.0, fps / max_fps)
    if math.floor((n - 1) / step + 1e-9) + 1 > max_frames > 1:
        assert idx[0] == 0 and idx[-1] == n - 1 and len(idx) == max_frames  # uniform incl. last
    elif off == 0:
        assert idx[0] == 0
        gaps = [b - a for a, b in zip(idx, idx[1:])]
        assert all(abs(g - step) <= 1 for g in gaps)  # fps cap respected


def test_sampling_examples():
    assert sample_frame_indices(20, 10, 4, 2) == [0, 5, 10, 15]
    assert sample_frame_indices(100, 10, 4, 2) == [0, 33, 66, 99]
    assert sample_frame_indices(3, 10, 8, 20) == [0, 1, 2]
    assert seed_for(1, "a") == seed_for(1, "a") != seed_for(2, "a")


def test_patch_layout():
    spec = DecodeSpec(
        image_size=4, patch_size=2, mean=(0, 0, 0), std=(1, 1, 1), max_frames=1, max_fps=1
    )
    frame = torch.arange(4 * 4 * 3, dtype=torch.uint8).view(1, 4, 4, 3)
    out = to_patches(frame, spec)
    assert out.shape == (1, 4, 12) and out.dtype == torch.float32
    for patch in range(4):
        pr, pc = divmod(patch, 2)
        for i in range(2):
            for j in range(2):
                for c in range(3):
                    want = frame[0, pr * 2 + i, pc * 2 + j, c].item() / 255.0
                    assert out[0, patch, (i * 2 + j) * 3 + c].item() == pytest.approx(want)


def test_backends_agree_and_bad_bytes(videos):
    for name in ("h264", "vp9", "sk_carphone_distorted"):
        data = videos[name].read_bytes()
        a, ta, used_a = decode_frames(data, [0, 3, 7], name, "torchcodec")
        b, tb, used_b = decode_frames(data, [0, 3, 7], name, "pyav")
        assert (used_a, used_b) == ("torchcodec", "pyav")
        assert a.shape == b.shape and a.dtype == torch.uint8
        assert (a.int() - b.int()).abs().float().mean() < 2.0
        assert ta == pytest.approx(tb, abs=1e-3)
    with pytest.raises(SampleError) as e:
        decode_frames(b"\x00garbage" * 100, [0], "junk")
    assert e.value.key == "junk"
