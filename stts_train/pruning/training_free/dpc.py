"""Density-peak clustering score (DPC-kNN), shared by FastVID and HoliTom, and its noise source.

As the goldens define it (docs/pruners.md#density-peaks):
    dist  = cdist(x, x) / sqrt(D)
    rho_i = exp(-mean_{k nearest j} dist_ij^2) + 1e-6 * u_i     (k nearest include dist_ii = 0)
    delta_i = min_j {dist_ij if rho_j > rho_i else dist_max}    (dist_max: max of the matrix)
    score_i = delta_i * rho_i

Legend (AGENTS.md#shape-legend): D feature width; local here: B independent problems (frames or
windows), P points per problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from stts_train.errors import LayoutError

NOISE_SCALE = 1e-6


class NoiseSource:
    """Uniform [0, 1) tensors for the density tie-breaking noise, in drawing order.

    Either replays saved tensors (``tensors``, e.g. a golden case's ``noise_0, noise_1, ...``) or
    draws ``torch.rand(shape, generator=generator)``. A generator seeded with s reproduces what the
    reference drew after ``torch.manual_seed(s)`` on CPU. Never touches the global RNG.
    """

    def __init__(
        self,
        tensors: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        self._tensors = list(tensors) if tensors is not None else None
        self._next = 0
        if self._tensors is None and generator is None:
            generator = torch.Generator().manual_seed(seed)
        self._generator = generator

    def draw(self, shape: tuple[int, ...]) -> Tensor:
        if self._tensors is None:
            return torch.rand(shape, generator=self._generator, dtype=torch.float32)
        if self._next >= len(self._tensors):
            raise LayoutError(
                f"noise tensor #{self._next} of shape {shape} was requested but only "
                f"{len(self._tensors)} were supplied; pass every noise tensor the method draws "
                "(golden cases: noise_0, noise_1, ... in order) or a generator instead"
            )
        t = self._tensors[self._next]
        if tuple(t.shape) != tuple(shape):
            raise LayoutError(
                f"noise tensor #{self._next} has shape {tuple(t.shape)} but the method draws "
                f"{tuple(shape)} here; the saved noise does not belong to this input/config"
            )
        self._next += 1
        return t

    @property
    def consumed(self) -> int:
        return self._next

    def check_exhausted(self) -> None:
        """Supplied tensors must all be used: a leftover means the inputs and noise disagree."""
        if self._tensors is not None and self._next != len(self._tensors):
            raise LayoutError(
                f"{len(self._tensors)} noise tensors were supplied but the method drew only "
                f"{self._next}; the saved noise does not belong to this input/config"
            )


def pairwise_dist_BPP(x_BPD: Tensor) -> Tensor:
    """Euclidean distances scaled by 1/sqrt(D)."""
    return torch.cdist(x_BPD, x_BPD) / (x_BPD.shape[-1] ** 0.5)


def density_peak_score(dist_BPP: Tensor, k: int, noise_BP: Tensor) -> Tensor:
    """DPC-kNN score per point from a distance matrix; ``noise_BP`` is U[0,1) (scaled here)."""
    B, P, _ = dist_BPP.shape
    if not 1 <= k <= P:
        raise LayoutError(f"density-peak neighbour count k={k} must be in [1, {P}] points")
    nearest_BPk = torch.topk(dist_BPP, k, dim=-1, largest=False).values
    rho_BP = torch.exp(-(nearest_BPk**2).mean(dim=-1))
    rho_BP = rho_BP + noise_BP.to(rho_BP.dtype) * NOISE_SCALE
    dist_max_B11 = dist_BPP.reshape(B, -1).max(dim=-1).values.view(B, 1, 1)
    denser_BPP = rho_BP[:, None, :] > rho_BP[:, :, None]  # [b, i, j]: rho_j > rho_i
    delta_BP = torch.where(denser_BPP, dist_BPP, dist_max_B11).min(dim=-1).values
    return delta_BP * rho_BP
