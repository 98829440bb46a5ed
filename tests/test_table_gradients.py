"""TableGradients (cllm4rec/table_gradients.py): the ID tables' gradients built in kept buffers equal
autograd's fresh ones, whatever mix of head gradients, gathered rows and other autograd paths a step
has, and whatever the previous step left in the buffers (fp64, exact up to summation order: 1e-12)."""
from __future__ import annotations

import pytest
import torch

from cllm4rec.losses import item_softmax_nll_sum
from cllm4rec.table_gradients import TableGradients, gather_rows

J, K = 40, 6


def step_loss(table: torch.nn.Parameter, sink: TableGradients | None, *, head: int, rows: list[int],
              autograd_term: bool = False, seed: int = 0) -> torch.Tensor:
    """`head` item-softmax losses over the table (each 5 rows), a term on the gathered `rows`, and
    optionally a plain autograd term on the whole table."""
    gen = torch.Generator().manual_seed(seed)
    loss = table.new_zeros(())
    for _ in range(head):
        hidden = torch.randn(5, K, generator=gen, dtype=table.dtype)
        loss = loss + item_softmax_nll_sum(hidden, table, torch.arange(5), torch.randint(0, J, (5,), generator=gen), sink=sink)
    if rows:
        weights = torch.randn(len(rows), K, generator=gen, dtype=table.dtype)
        loss = loss + (gather_rows(table, torch.tensor(rows), sink) * weights).sum()
    if autograd_term:
        loss = loss + 0.5 * table.pow(2).sum()
    return loss


def gradients(steps: list[dict], kept: bool) -> list[torch.Tensor]:
    """The table's gradient after each step (a fresh .grad every step, as the trainer's zero_grad gives)."""
    table = torch.nn.Parameter(torch.randn(J, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    sink = TableGradients() if kept else None
    out = []
    for seed, step in enumerate(steps):
        table.grad = None
        step_loss(table, sink, seed=seed, **step).backward()
        if sink is not None:
            sink.apply()
        out.append(table.grad.clone())
    return out


def test_kept_buffers_give_autograds_gradients_through_any_sequence_of_steps():
    steps = [dict(head=1, rows=[3, 7]), dict(head=0, rows=[1, 2]), dict(head=0, rows=[5]), dict(head=1, rows=[]),
             dict(head=0, rows=[8, 9, 30]), dict(head=2, rows=[0]), dict(head=1, rows=[4], autograd_term=True),
             dict(head=0, rows=[6], autograd_term=True), dict(head=0, rows=[2, 11])]
    for got, want, step in zip(gradients(steps, kept=True), gradients(steps, kept=False), steps):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(step))


def test_the_head_gradient_is_written_into_the_kept_buffer_and_rows_added_there():
    table = torch.nn.Parameter(torch.randn(J, K, dtype=torch.float64))
    sink = TableGradients()
    for seed in range(3):
        table.grad = None
        step_loss(table, sink, head=1, rows=[2, 5], seed=seed).backward()
        assert table.grad is None  # nothing reaches .grad before apply()
        sink.apply()
        assert table.grad is sink.buffers[table]


def test_a_rows_only_step_after_a_head_step_zeroes_the_whole_buffer():
    table = torch.nn.Parameter(torch.randn(J, K, dtype=torch.float64))
    sink = TableGradients()
    step_loss(table, sink, head=1, rows=[]).backward()
    sink.apply()
    table.grad = None
    step_loss(table, sink, head=0, rows=[3]).backward()
    sink.apply()
    assert torch.count_nonzero(table.grad.abs().sum(dim=1)) == 1  # only row 3 is left


def test_a_forward_after_an_unapplied_backward_is_an_error():
    """Gradients handed to the sink but never applied would be lost silently: the next forward says so."""
    table = torch.nn.Parameter(torch.randn(J, K, dtype=torch.float64))
    sink = TableGradients()
    step_loss(table, sink, head=1, rows=[2]).backward()
    for head, rows in ((1, []), (0, [3])):
        with pytest.raises(RuntimeError, match="never applied; call apply"):
            step_loss(table, sink, head=head, rows=rows)
    sink.apply()
    step_loss(table, sink, head=1, rows=[3]).backward()  # fine once applied
