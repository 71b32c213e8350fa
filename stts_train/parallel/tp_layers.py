"""Tensor-parallel layer factory backed by megatron-core.

`MegatronLayerFactory` implements `stts_train.models.common.layers.LayerFactory`. At tp=1 use
`LocalLayerFactory` (plain nn.Linear); `layer_factory(dims)` picks the right one.

Every tensor-parallel module built here carries `tp_partition_dims`: for each of its parameters,
the dimension that is split across tensor-parallel ranks (absent = replicated). `parallelize.py`
uses it to shard a full (tp=1) state dict into the tp model, and `checkpoint/consolidate.py` to
gather shards back. Megatron splits contiguously, rank r owning block r along that dimension.

Inputs of any rank are flattened to 2D around the megatron call (its backward assumes <= 3D).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from stts_train.constants import IGNORE_INDEX
from stts_train.models.common.layers import LocalLayerFactory

if TYPE_CHECKING:
    from stts_train.parallel.dims import ParallelDims


def _no_init(weight: torch.Tensor) -> None:
    # Weights are copied from the tp=1 reference model by parallelize(); zero until then so an
    # uncopied tensor can never hold garbage.
    with torch.no_grad():
        weight.zero_()


def _flat_call(layer_forward, x: torch.Tensor) -> torch.Tensor:
    lead = x.shape[:-1]
    out, bias = layer_forward(x.reshape(-1, x.shape[-1]))
    assert bias is None  # skip_bias_add=False: megatron adds the bias itself
    return out.reshape(*lead, out.shape[-1])


def tp_partition_dims(module: nn.Module) -> dict[str, int]:
    """Parameter name (relative to `module`) -> split dimension, for every TP-sharded parameter."""
    out: dict[str, int] = {}
    for mod_name, mod in module.named_modules():
        dims = getattr(mod, "tp_partition_dims", None)
        if not dims:
            continue
        for pname, dim in dims.items():
            out[f"{mod_name}.{pname}" if mod_name else pname] = dim
    return out


def _build_classes():
    """Define the megatron subclasses lazily so importing this module stays cheap."""
    from megatron.core import tensor_parallel as tpl

    class ColumnLinear(tpl.ColumnParallelLinear):
        """Y = X A^T + b with A's rows (output features) split; output stays sharded."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return _flat_call(super().forward, x)

    class RowLinear(tpl.RowParallelLinear):
        """Input features split; partial products all-reduced; bias added once, replicated."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return _flat_call(super().forward, x)

    class VocabEmbedding(tpl.VocabParallelEmbedding):
        """Embedding rows (vocabulary) split; output all-reduced (replicated)."""

    return ColumnLinear, RowLinear, VocabEmbedding


class MegatronLayerFactory:
    """LayerFactory with megatron-core column/row-parallel linears and vocab-parallel layers.

    Args:
        dims: the parallel layout (tensor-parallel group and size).
        params_dtype: parameter dtype (fp32 master weights; DeepSpeed casts for bf16).
    """

    def __init__(self, dims: ParallelDims, params_dtype: torch.dtype = torch.float32) -> None:
        from megatron.core import ModelParallelConfig

        self.tp_size = dims.tp
        self._dims = dims
        self._config = ModelParallelConfig(
            tensor_model_parallel_size=dims.tp,
            use_cpu_initialization=True,
            perform_initialization=True,
            params_dtype=params_dtype,
            sequence_parallel=False,
            gradient_accumulation_fusion=False,
        )
        self._column_cls, self._row_cls, self._embed_cls = _build_classes()
        self._local = LocalLayerFactory()

    def column(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        layer = self._column_cls(
            in_features,
            out_features,
            config=self._config,
            init_method=_no_init,
            bias=bias,
            gather_output=False,
            skip_bias_add=False,
        )
        layer.tp_partition_dims = {"weight": 0, **({"bias": 0} if bias else {})}
        return layer

    def row(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        layer = self._row_cls(
            in_features,
            out_features,
            config=self._config,
            init_method=_no_init,
            bias=bias,
            input_is_parallel=True,
            skip_bias_add=False,
        )
        layer.tp_partition_dims = {"weight": 1}
        return layer

    def replicated(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return self._local.replicated(in_features, out_features, bias)

    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module:
        layer = self._embed_cls(vocab_size, dim, init_method=_no_init, config=self._config)
        layer.tp_partition_dims = {"weight": 0}
        return layer

    def vocab_head(self, dim: int, vocab_size: int) -> nn.Module:
        return self.column(dim, vocab_size, bias=False)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-token CE from vocab-sharded logits; 0 where labels == -100 (like F.cross_entropy)."""
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        valid = labels != IGNORE_INDEX
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
        # megatron subtracts the max in place: hand it a private fp32 copy
        loss = vocab_parallel_cross_entropy(logits.to(torch.float32, copy=True), safe_labels)
        return loss * valid.to(loss.dtype)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        return gather_from_tensor_model_parallel_region(logits)


def layer_factory(dims: ParallelDims) -> LocalLayerFactory | MegatronLayerFactory:
    """The factory for this layout: plain layers at tp=1, megatron-core layers otherwise."""
    return LocalLayerFactory() if dims.tp == 1 else MegatronLayerFactory(dims)
