"""CPU compatibility shims for megatron-core and DeepSpeed (see shared notes/stack.md).

Active only when training runs on CPU; `install_cpu_shims()` is idempotent and a no-op when CUDA
is the training device. Everything that patches third-party code lives here and nowhere else:

1. megatron `GlobalMemoryBuffer.get_tensor` allocates on `torch.cuda.current_device()`; the shim
   allocates on CPU.
2. megatron's "CUDA" RNG tracker (`get_cuda_rng_tracker`) forks the CUDA generator; the shim
   forks the CPU generator instead, so model-parallel RNG regions work on CPU.
3. `torch.cuda.current_device` (used on sequence-parallel paths) returns the CPU device.
4. DeepSpeed builds a shared-memory comm op with a JIT compile at `init_distributed` (30-95 s on a
   fresh machine; only used by inference all-reduce); the shim skips it.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterator
from typing import Any

import torch

_INSTALLED = False


class CpuRngTracker:
    """Drop-in for megatron's CudaRNGStatesTracker that forks the CPU generator."""

    def __init__(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def reset(self) -> None:
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = dict(states)

    def is_initialized(self) -> bool:
        return True

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        generator = torch.Generator().manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


_CPU_TRACKER = CpuRngTracker()


def _cpu_get_tensor(
    self: Any, tensor_shape: Any, dtype: torch.dtype, name: str, mem_alloc_context: Any = None
) -> torch.Tensor:
    required = functools.reduce(operator.mul, tensor_shape, 1)
    key = (name, dtype)
    buf = self.buffer.get(key)
    if buf is None or buf.numel() < required:
        buf = torch.empty(required, dtype=dtype, device="cpu")
        self.buffer[key] = buf
    return buf[:required].view(*tensor_shape)


def install_cpu_shims(device: torch.device | str = "cpu") -> bool:
    """Install the shims when `device` is CPU. Returns True if shims are (now) active."""
    global _INSTALLED
    if torch.device(device).type != "cpu":
        return False
    if _INSTALLED:
        return True
    from megatron.core import utils as mc_utils
    from megatron.core.tensor_parallel import layers as mc_layers
    from megatron.core.tensor_parallel import random as mc_random

    mc_utils.GlobalMemoryBuffer.get_tensor = _cpu_get_tensor  # type: ignore[method-assign]

    def get_cpu_rng_tracker(*args: Any, **kwargs: Any) -> CpuRngTracker:
        return _CPU_TRACKER

    mc_random.get_cuda_rng_tracker = get_cpu_rng_tracker
    mc_layers.get_cuda_rng_tracker = get_cpu_rng_tracker
    if not torch.cuda.is_available():
        torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment,return-value]

    import importlib

    # `import deepspeed.comm.torch as m` would bind the torch package (deepspeed.comm imports
    # torch), so fetch the submodule itself
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    ds_comm_torch.build_shm_op = lambda: None
    _INSTALLED = True
    return True
