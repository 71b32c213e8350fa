"""Moving planned samples between data-parallel ranks (the live loader's only collectives).

Every rank decodes its own share of the stream. To balance modelled cost across ranks, the
loader plans the union of all ranks' windows (`plan_closed_window`) and then ships each sample to
the rank that the plan gave it. Metadata travels by all-gather (a few hundred bytes a sample).
Samples travel point to point: each rank pickles what it owes every peer, the ranks all-gather
the (R,) byte counts, and all sends and receives are posted at once (`batch_isend_irecv`), so the
transfers of different pairs overlap and nothing waits on an unrelated pair.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist


class SampleExchange:
    """Collectives over the data-parallel group (`group=None`: the default group)."""

    def __init__(self, group: Any, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size

    def _device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo (CPU runs, tests) only CPU ones.
        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def exchange(self, outbox: dict[int, list[Any]]) -> dict[int, list[Any]]:
        """Send `outbox[r]` to rank r; returns {source rank: its list} for every rank that sent
        here."""
        device = self._device()
        payload = {
            peer: pickle.dumps(objs, protocol=pickle.HIGHEST_PROTOCOL)
            for peer, objs in outbox.items()
            if objs and peer != self.rank
        }
        sizes_R = torch.zeros(self.size, dtype=torch.int64, device=device)
        for peer, blob in payload.items():
            sizes_R[peer] = len(blob)
        all_sizes_RR = [torch.zeros_like(sizes_R) for _ in range(self.size)]
        dist.all_gather(
            all_sizes_RR, sizes_R, group=self.group
        )  # all_sizes_RR[src][dst]: bytes src -> dst

        ops, inbox_bytes = [], {}
        for peer in range(self.size):
            if peer == self.rank:
                continue
            incoming = int(all_sizes_RR[peer][self.rank])
            if incoming:
                buf = torch.empty(incoming, dtype=torch.uint8, device=device)
                inbox_bytes[peer] = buf
                ops.append(dist.P2POp(dist.irecv, buf, group=self.group, group_peer=peer))
            if peer in payload:
                blob = torch.frombuffer(bytearray(payload[peer]), dtype=torch.uint8).to(device)
                ops.append(dist.P2POp(dist.isend, blob, group=self.group, group_peer=peer))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        # pickles from the ranks of this same job (what torch's object collectives also unpickle)
        return {
            peer: pickle.loads(buf.cpu().numpy().tobytes()) for peer, buf in inbox_bytes.items()
        }  # noqa: S301
