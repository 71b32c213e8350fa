"""ParallelDims: the single source of truth for the data-parallel x tensor-parallel layout.

Built once per process after `torch.distributed` is initialised. It initialises megatron-core's
`parallel_state` (tensor-parallel groups) and doubles as the `mpu` object DeepSpeed expects, so
DeepSpeed reduces gradients over the data-parallel group only and knows which parameters are
tensor-parallel shards. Data code asks it for `dp_rank`/`dp_size`, never `dist.get_rank()`.

Rank order (megatron's "tp-cp-ep-dp-pp"): tensor-parallel ranks are adjacent, i.e. global rank
r has tp_rank = r % tp and dp_rank = r // tp.
"""

from __future__ import annotations

import torch.distributed as dist

from stts_train.errors import ConfigError


def validate_layout(world_size: int, tp: int) -> int:
    """Return the data-parallel size for `world_size` ranks at tensor-parallel size `tp`."""
    if tp < 1:
        raise ConfigError(f"parallel.tensor_parallel={tp} must be >= 1")
    if world_size % tp:
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor_parallel={tp}: "
            f"dp x tp must equal the world size; use a world size that is a multiple of {tp} "
            f"(e.g. parallel.num_ranks={tp * max(1, world_size // tp)}) or change tensor_parallel"
        )
    return world_size // tp


class ParallelDims:
    """Data-parallel x tensor-parallel layout over the default process group.

    Args:
        tp: tensor-parallel size.
        dp: expected data-parallel size (None = world_size // tp); validated against the world.
    """

    def __init__(self, tp: int = 1, dp: int | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("ParallelDims needs torch.distributed to be initialised first")
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        dp_from_world = validate_layout(self.world_size, tp)
        if dp is not None and dp * tp != self.world_size:
            raise ConfigError(
                f"data-parallel {dp} x tensor-parallel {tp} = {dp * tp} does not match the world "
                f"size {self.world_size}; launch {dp * tp} ranks or change the layout"
            )
        self.tp = tp
        self.dp = dp_from_world
        self._init_megatron()

    def _init_megatron(self) -> None:
        from megatron.core import parallel_state as ps

        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        ps.initialize_model_parallel(
            tensor_model_parallel_size=self.tp, create_gloo_process_groups=False
        )
        self._ps = ps
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.dp_group = ps.get_data_parallel_group()
        assert ps.get_tensor_model_parallel_world_size() == self.tp
        assert ps.get_data_parallel_world_size() == self.dp

    # -- the layout, for our code ------------------------------------------------------------
    @property
    def tp_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    @property
    def dp_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"world {self.world_size} = dp {self.dp} x tp {self.tp}"

    def destroy(self) -> None:
        if self._ps.model_parallel_is_initialized():
            self._ps.destroy_model_parallel()

    # -- DeepSpeed mpu interface (legacy megatron names included) ------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.tp

    def get_model_parallel_group(self) -> dist.ProcessGroup:
        return self.tp_group

    def get_tensor_model_parallel_rank(self) -> int:
        return self.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.tp

    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup:
        return self.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_src_rank()

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.dp

    def get_data_parallel_group(self) -> dist.ProcessGroup:
        return self.dp_group

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1
