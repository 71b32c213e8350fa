"""SampleExchange over 3 real gloo ranks: uneven, one-way and empty outboxes arrive intact."""

from __future__ import annotations

import pytest
import torch

from stts_train.testing import run_distributed_test

pytestmark = pytest.mark.slow  # gloo ranks (run_distributed_test)


def _exchange_worker() -> dict:
    import torch.distributed as dist

    from stts_train.data.exchange import SampleExchange

    rank, size = dist.get_rank(), dist.get_world_size()
    ex = SampleExchange(None, rank, size)
    # rank r sends r+1 tensors to every higher rank and nothing to lower ones (one-way pairs);
    # rank 0 additionally sends a large payload to rank 2
    outbox = {
        peer: [torch.full((3, 4), float(10 * rank + peer)) for _ in range(rank + 1)]
        for peer in range(rank + 1, size)
    }
    if rank == 0:
        outbox[2].append(torch.arange(1_000_000, dtype=torch.float32))
    got = ex.exchange(outbox)
    metas = ex.all_gather({"rank": rank})
    return {"got": got, "metas": metas}


def test_exchange_delivers_each_outbox_to_its_rank():
    out = run_distributed_test(_exchange_worker, 3, timeout_s=180)
    assert [m["rank"] for m in out[0]["metas"]] == [0, 1, 2]
    assert out[0]["got"] == {}  # nobody sends to rank 0
    assert sorted(out[1]["got"]) == [0] and len(out[1]["got"][0]) == 1
    torch.testing.assert_close(out[1]["got"][0][0], torch.full((3, 4), 1.0))
    got2 = out[2]["got"]
    assert sorted(got2) == [0, 1] and len(got2[0]) == 2 and len(got2[1]) == 2
    torch.testing.assert_close(got2[0][0], torch.full((3, 4), 2.0))
    torch.testing.assert_close(got2[0][1], torch.arange(1_000_000, dtype=torch.float32))
    torch.testing.assert_close(got2[1][1], torch.full((3, 4), 12.0))
