"""The row-sharded tables' primitives on 2 and 4 CPU ranks against the whole-table computations: the item
softmax (cllm4rec/sharded_softmax.py: loss and both gradients, the per-rank bound on stored exps), the
top-k (cllm4rec/sharded_scores.py: exclusions and ties), the exchange of rows and their gradients
(cllm4rec/sharded_tables.py). Each world size is spawned once (module fixture)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spawn_ranks import run_ranks

K, J = 6, 23  # 23 items: shards of unequal sizes on 2 and 4 ranks
SIZES = {1: [9], 2: [5, 8], 4: [5, 0, 7, 3]}  # each rank's rows (one rank without any on 4)
BLOCK_ROWS = 2  # the stored exps' bound, in rows of the whole table: 2·J elements
TOP_K = 7


def softmax_case(world: int, multi_hot: bool, seed: int = 0):
    """(hidden [T, K], table [J, K], target rows [P] into hidden, target items [P]) in fp64."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(SIZES[world])
    hidden = torch.randn(total, K, generator=gen, dtype=torch.float64)
    table = torch.randn(J, K, generator=gen, dtype=torch.float64) * 0.7
    if not multi_hot:
        items = torch.randint(0, J, (total,), generator=gen)
        items[:3] = 4  # a repeated target
        return hidden, table, torch.arange(total), items
    per_row = torch.randint(0, 4, (total,), generator=gen)  # 0..3 targets a row, some rows none
    rows = torch.repeat_interleave(torch.arange(total), per_row)
    return hidden, table, rows, torch.randint(0, J, (rows.shape[0],), generator=gen)


def topk_case(world: int, seed: int = 1):
    """(scores [T, J] with ties, users [T], training items per user to exclude)."""
    from cllm4rec.interactions import UserItems

    rng = np.random.default_rng(seed)
    total = sum(SIZES[world])
    scores = torch.from_numpy(rng.integers(0, 6, size=(total, J)).astype(np.float32))  # many ties
    scores[0, :] = 1.0  # one row all tied
    users = rng.permutation(40)[:total]
    exclude = UserItems.from_lists([sorted(rng.choice(J, size=rng.integers(0, 12), replace=False)) for _ in range(40)], J)
    return scores, users, exclude


def _rank_cases(comm) -> dict:
    """Every check's figures on this rank (runs in a spawned rank)."""
    from cllm4rec import losses
    from cllm4rec.interactions import UserItems
    from cllm4rec.row_shards import RowShards
    from cllm4rec.sharded_scores import ShardScores
    from cllm4rec.sharded_softmax import sharded_item_softmax_nll_sum
    from cllm4rec.table_gradients import TableGradients

    layout = RowShards(J, comm.world)
    lo, hi = layout.range(comm.rank)
    sizes = SIZES[comm.world]
    first, mine = sum(sizes[: comm.rank]), sizes[comm.rank]
    requested = []
    plain_workspace = losses.workspace
    losses.workspace = lambda n, device, dtype: requested.append(n) or plain_workspace(n, device, dtype)
    out: dict = {}
    for multi_hot in (False, True):
        hidden, table, rows, items = softmax_case(comm.world, multi_hot)
        own = (rows >= first) & (rows < first + mine)
        h = hidden[first : first + mine].clone().requires_grad_()
        shard = torch.nn.Parameter(table[lo:hi].clone())
        sink = TableGradients() if multi_hot else None  # the head gradient through a kept buffer, or autograd
        requested.clear()
        loss = sharded_item_softmax_nll_sum(h, shard, rows[own] - first, items[own], layout, comm, sink=sink,
                                            block_elements=BLOCK_ROWS * J)
        most_stored = max(requested)
        (loss * 1.5).backward()
        if sink is not None:
            sink.apply()
        with torch.no_grad():
            no_grad = sharded_item_softmax_nll_sum(h, shard, rows[own] - first, items[own], layout, comm)
        frozen = sharded_item_softmax_nll_sum(h.detach(), shard.detach(), rows[own] - first, items[own], layout, comm)
        out[multi_hot] = {"loss": loss.detach(), "no_grad": no_grad, "frozen": frozen, "grad_h": h.grad,
                          "grad_shard": shard.grad, "most_stored": most_stored}
    scores, users, exclude = topk_case(comm.world)
    own_users = users[first : first + mine]
    for k in (TOP_K, J + 5):  # every rank's users against this rank's items, as a scoring pass gives them
        out[f"top{k}"] = ShardScores(scores[:, lo:hi], sizes, layout).top_excluding(exclude, own_users, k, comm)
    out["exchange"] = _exchange(comm)
    out["counted"] = _counted(comm)
    nothing = UserItems.from_lists([[] for _ in range(exclude.n_users)], J)
    out["distinct"] = ShardScores(distinct_scores(comm.world)[:, lo:hi], sizes, layout).top_excluding(
        nothing, own_users, TOP_K, comm)
    return out


N_ROWS = 11  # the exchange's table


def exchange_case(world: int, rank: int):
    """(table [N_ROWS, K], this rank's distinct rows [U], their loss weights [U, K]); on 4 ranks rank 1
    asks for no row."""
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(N_ROWS, K, generator=gen)
    picks = [torch.randperm(N_ROWS, generator=gen)[: 3 + 2 * r].sort().values for r in range(world)]
    if world == 4:
        picks[1] = picks[1][:0]
    return table, picks[rank], torch.randn(len(picks[rank]), K, generator=torch.Generator().manual_seed(rank))


def _exchange(comm) -> dict:
    """This rank's rows fetched from their owners, a loss over them, the gradients sent back."""
    from cllm4rec.row_shards import RowShards
    from cllm4rec.sharded_tables import ShardedTables

    table, index, weights = exchange_case(comm.world, comm.rank)
    layout = RowShards(N_ROWS, comm.world)
    lo, hi = layout.range(comm.rank)
    shard = torch.nn.Parameter(table[lo:hi].clone())
    access = ShardedTables({shard: layout}, comm)
    rows = access.rows(shard, index)
    before = comm.calls["all_to_all"]
    anchors = access.anchors(shard, index)  # the same rows: the request is reused, one all-to-all
    reused = comm.calls["all_to_all"] - before
    (rows * weights).sum().add((rows - anchors).pow(2).sum()).backward()
    assert shard.grad is None  # nothing reaches autograd: the owners get it in apply()
    access.apply()
    return {"rows": rows.detach(), "anchors": anchors, "grad": shard.grad, "reused": reused}


def _counted(comm) -> dict:
    """The bytes `Collectives` counts for one call of each kind."""
    comm.reset()
    comm.all_gather(torch.zeros(3, 2))  # 24 B from each other rank
    comm.reduce_scatter(torch.zeros(comm.world * 4))  # a ring: (R − 1) steps of 16 B
    comm.all_to_all(torch.zeros(comm.world, 5), [1] * comm.world, [1] * comm.world)  # 20 B from each other rank
    return dict(comm.received)


def distinct_scores(world: int) -> torch.Tensor:
    """[T, J] scores without ties."""
    return torch.randperm(sum(SIZES[world]) * J, generator=torch.Generator().manual_seed(2)).float().view(-1, J)


@pytest.fixture(scope="module", params=[2, 4])
def ranks(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world = request.param
    return world, run_ranks(_rank_cases, world, Path(tmp_path_factory.mktemp(f"sharded{world}")))


def _plain(hidden, table, rows, items):
    return -torch.log_softmax(hidden @ table.t(), dim=1)[rows, items].sum()


@pytest.mark.parametrize("multi_hot", [False, True])
def test_sharded_softmax_equals_the_whole_table(ranks, multi_hot) -> None:
    """Summed over the ranks, the losses equal the whole-table loss; each rank's hidden-state gradient is
    its rows' part of the whole one and its shard gradient its items' part (fp64, 1e-10), the head
    gradient through a kept buffer (TableGradients) or autograd alike; under no_grad, or of inputs
    that need no gradient, only the loss."""
    world, results = ranks
    hidden, table, rows, items = softmax_case(world, multi_hot)
    h, w = hidden.clone().requires_grad_(), table.clone().requires_grad_()
    want = _plain(h, w, rows, items)
    grad_h, grad_w = torch.autograd.grad(want * 1.5, (h, w))
    got = [r[multi_hot] for r in results]
    tol = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(sum(r["loss"] for r in got), want.detach(), **tol)
    torch.testing.assert_close(sum(r["no_grad"] for r in got), want.detach(), **tol)
    torch.testing.assert_close(sum(r["frozen"] for r in got), want.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["grad_h"] for r in got]), grad_h, **tol)
    torch.testing.assert_close(torch.cat([r["grad_shard"] for r in got]), grad_w, **tol)


def test_sharded_softmax_keeps_the_stored_exps_bound_per_rank(ranks) -> None:
    """No rank stores more exps at once than the bound (2 rows of the whole table here), although each
    rank scores every rank's rows."""
    _, results = ranks
    for r in results:
        for multi_hot in (False, True):
            assert 0 < r[multi_hot]["most_stored"] <= BLOCK_ROWS * J


@pytest.mark.parametrize("k", [TOP_K, J + 5])
def test_sharded_topk_equals_topk_excluding_on_the_whole_table(ranks, k) -> None:
    """Local top-k per shard, then one merge: the same items in the same order (ties by the lower item)
    and the same scores as `topk_excluding` over whole rows, exclusions and k past the catalogue included."""
    from cllm4rec.metrics import topk_excluding

    world, results = ranks
    scores, users, exclude = topk_case(world)
    first = 0
    for size, r in zip(SIZES[world], results):
        items, values = r[f"top{k}"]
        own = scores[first : first + size]
        want = topk_excluding(own, exclude, users[first : first + size], k)
        assert torch.equal(items, want)
        assert torch.equal(values, own.gather(1, want.clamp(min=0)).masked_fill(want < 0, float("-inf")))
        first += size


def test_sharded_topk_equals_torch_topk_on_distinct_scores(ranks) -> None:
    world, results = ranks
    want = distinct_scores(world).topk(TOP_K, dim=1)
    items, values = zip(*(r["distinct"] for r in results))
    assert torch.equal(torch.cat(items), want.indices) and torch.equal(torch.cat(values), want.values)


def test_rows_reach_the_ranks_that_ask_and_gradients_their_owners(ranks) -> None:
    """Each rank gets exactly the rows it asked for (a rank asking for none included); the anchors of the
    same rows reuse the request (one all-to-all, of the rows); after apply() each owner's shard holds the
    gradient that every rank's loss gives its rows."""
    world, results = ranks
    table = exchange_case(world, 0)[0].requires_grad_()
    loss = torch.zeros(())
    for rank, r in enumerate(results):
        _, index, weights = exchange_case(world, rank)
        got = r["exchange"]
        assert torch.equal(got["rows"], table.detach()[index]) and torch.equal(got["anchors"], table.detach()[index])
        assert got["reused"] == 1
        loss = loss + (table[index] * weights).sum()
    (want,) = torch.autograd.grad(loss, table)
    torch.testing.assert_close(torch.cat([r["exchange"]["grad"] for r in results]), want, rtol=1e-6, atol=1e-6)


def test_collectives_count_the_bytes_each_rank_receives(ranks) -> None:
    world, results = ranks
    for r in results:
        assert r["counted"] == {"all_gather": 24 * (world - 1), "reduce_scatter": 16 * (world - 1),
                                "all_to_all": 20 * (world - 1)}
