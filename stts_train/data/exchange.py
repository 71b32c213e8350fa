"""Moving planned samples between data-parallel ranks (the live loader's only collectives).

Every rank decodes its own share of the stream. To balance modelled cost across ranks, the
loader plans the union of all ranks' windows (`plan_closed_window`) and then ships each sample to
the rank that the plan gave it. Metadata travels by all-gather (a few hundred bytes a sample);
samples travel point to point, only between pairs that exchange something, pairs visited in one
global order on every rank (so blocking sends cannot deadlock).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


class SampleExchange:
    """Collectives over the data-parallel group (`group=None`: the default group)."""

    def __init__(self, group: Any, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def exchange(self, outbox: dict[int, list[Any]], expect_from: set[int]) -> dict[int, list[Any]]:
        """Send `outbox[r]` to rank r, receive one list from every rank in `expect_from`.

        Both sides must agree on who sends to whom (the loader derives it from the shared plan).
        """
        inbox: dict[int, list[Any]] = {}
        me = self.rank
        for a in range(self.size):
            for b in range(a + 1, self.size):
                if me not in (a, b):
                    continue
                peer = b if me == a else a
                send, recv = bool(outbox.get(peer)), peer in expect_from
                # the lower rank of a pair sends first, the higher one receives first
                steps = [("send", send), ("recv", recv)] if me == a else [("recv", recv), ("send", send)]
                for kind, needed in steps:
                    if not needed:
                        continue
                    if kind == "send":
                        dist.send_object_list([outbox[peer]], group=self.group, group_dst=peer)
                    else:
                        box: list[Any] = [None]
                        dist.recv_object_list(box, group=self.group, group_src=peer)
                        inbox[peer] = box[0]
        return inbox
