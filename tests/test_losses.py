"""cllm4rec/losses.py against plain computations: the fused item softmax (next-item and multinomial,
fp64/fp32/bf16 gradient products, chunked rows and cached item blocks) and the fused vocabulary
cross-entropy."""
from __future__ import annotations

import pytest
import torch


def plain_item_softmax_nll(hidden, table, rows, items):
    """The reference: whole [M, J] logits, log-softmax, sum over the target pairs (autograd)."""
    return -torch.log_softmax(hidden @ table.t(), dim=1)[rows, items].sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_rows", [1, 5, 13])
@pytest.mark.parametrize("targets", ["one_per_row", "multi_hot"])
@pytest.mark.parametrize("cache_elements", [1, 40, 1 << 19])
def test_fused_item_softmax_matches_the_plain_one(dtype, chunk_rows, targets, cache_elements, monkeypatch):
    """Loss and both gradients of the fused, row-chunked item softmax equal whole-logits autograd:
    the next-token case (one target per row, repeated items) and the multinomial case (several
    targets per row, a row without targets); row chunks of 1..13 rows, item blocks of 1..50 items."""
    from cllm4rec import losses
    from cllm4rec.losses import item_softmax_nll_sum

    monkeypatch.setattr(losses, "CACHE_BLOCK_ELEMENTS", cache_elements)

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=gen, dtype=dtype).requires_grad_()
    table = (torch.randn(50, 8, generator=gen, dtype=dtype) * 0.5).requires_grad_()
    if targets == "one_per_row":
        rows, items = torch.arange(13), torch.randint(0, 50, (13,), generator=gen)
        items[:3] = 4  # repeated targets accumulate in the table gradient
    else:
        rows = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 4, 4, 12])  # row 3 and rows 5..11 have no target
        items = torch.tensor([1, 2, 49, 0, 7, 8, 3, 3, 9, 10, 11])
    want = plain_item_softmax_nll(hidden, table, rows, items)
    want_grads = torch.autograd.grad(want * 1.5, (hidden, table))
    got = item_softmax_nll_sum(hidden, table, rows, items, block_elements=50 * chunk_rows)
    assert type(got.grad_fn).__name__.startswith("FusedItemSoftmaxNLL")
    got_grads = torch.autograd.grad(got * 1.5, (hidden, table), retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(got, (hidden, table))  # its gradients were scaled in place: no silent reuse
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == dtype
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("chunk_rows", [1, 13])
@pytest.mark.parametrize("targets", ["one_per_row", "multi_hot"])
@pytest.mark.parametrize("cache_elements", [1, 40, 1 << 19])
def test_fused_item_softmax_with_bf16_gradient_products(chunk_rows, targets, cache_elements, monkeypatch):
    """gradient_dtype=bf16: the loss is the fp32 one bit for bit (logits, exps and sums stay fp32),
    and both gradients are within 0.5% (relative norm; 0.05–0.14% here) of the exact fp64 ones — bf16
    keeps 8 significant bits, ≤ 0.2% rounding per operand and per product — in both scaling branches and
    in row chunks."""
    from cllm4rec import losses
    from cllm4rec.losses import item_softmax_nll_sum

    monkeypatch.setattr(losses, "CACHE_BLOCK_ELEMENTS", cache_elements)
    monkeypatch.setattr(losses, "NARROW_PRODUCTS_MIN_ROWS", 13)
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(13, 8, generator=gen, dtype=torch.float64)
    table = torch.randn(50, 8, generator=gen, dtype=torch.float64) * 0.5
    if targets == "one_per_row":
        rows, items = torch.arange(13), torch.randint(0, 50, (13,), generator=gen)
    else:
        rows, items = torch.tensor([0, 0, 0, 1, 2, 2, 4, 4, 12]), torch.tensor([1, 2, 49, 0, 7, 8, 3, 9, 11])
    h64, t64 = hidden.clone().requires_grad_(), table.clone().requires_grad_()
    exact = torch.autograd.grad(plain_item_softmax_nll(h64, t64, rows, items), (h64, t64))
    results = {}
    for gradient_dtype in (None, torch.bfloat16):
        h, t = hidden.float().requires_grad_(), table.float().requires_grad_()
        loss = item_softmax_nll_sum(h, t, rows, items, block_elements=50 * chunk_rows, gradient_dtype=gradient_dtype)
        results[gradient_dtype] = (loss, torch.autograd.grad(loss, (h, t)))
    (fp32_loss, fp32_grads), (bf16_loss, bf16_grads) = results[None], results[torch.bfloat16]
    assert torch.equal(bf16_loss, fp32_loss)
    for got, fp32, want in zip(bf16_grads, fp32_grads, exact):
        assert got.dtype == torch.float32
        assert float((got.double() - want).norm() / want.norm()) < 5e-3
        assert not torch.equal(got, fp32)  # the products did run in bf16


def test_fused_item_softmax_refuses_a_float16_gradient_dtype():
    from cllm4rec.losses import item_softmax_nll_sum

    with pytest.raises(ValueError, match="gradient_dtype must be None, bfloat16.*float16"):
        item_softmax_nll_sum(torch.zeros(2, 4), torch.zeros(5, 4), torch.arange(2), torch.arange(2),
                             gradient_dtype=torch.float16)


def test_fused_item_softmax_keeps_fp32_gradient_products_for_few_rows():
    """Under NARROW_PRODUCTS_MIN_ROWS rows a bf16 gradient_dtype is not taken (converting the table's
    blocks would cost more than it saves): the gradients are the fp32 ones bit for bit."""
    from cllm4rec.losses import NARROW_PRODUCTS_MIN_ROWS, item_softmax_nll_sum

    gen = torch.Generator().manual_seed(4)
    hidden, table = torch.randn(NARROW_PRODUCTS_MIN_ROWS, 8, generator=gen), torch.randn(50, 8, generator=gen)
    items = torch.randint(0, 50, (NARROW_PRODUCTS_MIN_ROWS,), generator=gen)
    grads = {}
    for n_rows in (NARROW_PRODUCTS_MIN_ROWS - 1, NARROW_PRODUCTS_MIN_ROWS):
        for gradient_dtype in (None, torch.bfloat16):
            h, t = hidden[:n_rows].clone().requires_grad_(), table.clone().requires_grad_()
            loss = item_softmax_nll_sum(h, t, torch.arange(n_rows), items[:n_rows], gradient_dtype=gradient_dtype)
            grads[n_rows, gradient_dtype] = torch.autograd.grad(loss, (h, t))
    few, enough = NARROW_PRODUCTS_MIN_ROWS - 1, NARROW_PRODUCTS_MIN_ROWS
    assert all(torch.equal(a, b) for a, b in zip(grads[few, torch.bfloat16], grads[few, None]))
    assert not any(torch.equal(a, b) for a, b in zip(grads[enough, torch.bfloat16], grads[enough, None]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_item_softmax_with_logits_spread_past_the_exp_floor(dtype):
    """Logits spanning over 800 (past the −87.3 below which an fp32 exp is subnormal, and
    the −708 of fp64): the clamped exps leave loss and gradients equal to the plain ones."""
    from cllm4rec.losses import item_softmax_nll_sum

    gen = torch.Generator().manual_seed(2)
    hidden = (torch.randn(7, 8, generator=gen, dtype=dtype) * 30).requires_grad_()
    table = (torch.randn(300, 8, generator=gen, dtype=dtype) * 5).requires_grad_()
    rows, items = torch.arange(7), torch.randint(0, 300, (7,), generator=gen)
    logits = hidden.detach() @ table.detach().t()
    assert float((logits.amax(1) - logits.amin(1)).min()) > 800
    want = plain_item_softmax_nll(hidden, table, rows, items)
    want_grads = torch.autograd.grad(want, (hidden, table))
    got = item_softmax_nll_sum(hidden, table, rows, items, block_elements=300 * 3)
    got_grads = torch.autograd.grad(got, (hidden, table))
    # fp32: gradient entries reach ~160, and the blockwise and plain sums round differently (by up to
    # 5e-5 relative with one OpenMP thread); a mishandled exp floor would be off by far more
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-3}
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)


def test_fused_item_softmax_of_no_rows_has_zero_gradients():
    """A call without rows (a batch without item-space targets) gives zero gradients, not whatever
    an unwritten buffer held."""
    from cllm4rec.losses import item_softmax_nll_sum

    table = torch.randn(30, 4).requires_grad_()
    empty = torch.zeros(0, dtype=torch.long)
    item_softmax_nll_sum(torch.zeros(0, 4, requires_grad=True), table, empty, empty).backward()
    assert torch.equal(table.grad, torch.zeros(30, 4))


def test_fused_item_softmax_without_gradients_and_in_bf16():
    """Under no_grad it only computes the loss; bf16 inputs are computed in fp32 and get bf16 gradients."""
    from cllm4rec.losses import item_softmax_nll_sum

    gen = torch.Generator().manual_seed(1)
    hidden, table = torch.randn(6, 4, generator=gen), torch.randn(20, 4, generator=gen)
    rows, items = torch.arange(6), torch.randint(0, 20, (6,), generator=gen)
    with torch.no_grad():
        loss = item_softmax_nll_sum(hidden, table, rows, items, block_elements=40)
    torch.testing.assert_close(loss, plain_item_softmax_nll(hidden, table, rows, items))
    h16, t16 = hidden.bfloat16().requires_grad_(), table.bfloat16().requires_grad_()
    item_softmax_nll_sum(h16, t16, rows, items).backward()
    assert h16.grad.dtype == t16.grad.dtype == torch.bfloat16
    h32, t32 = h16.float().detach().requires_grad_(), t16.float().detach().requires_grad_()
    plain_item_softmax_nll(h32, t32, rows, items).backward()
    torch.testing.assert_close(t16.grad.float(), t32.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spread", [1.0, 200.0])
def test_fused_vocab_cross_entropy_matches_torch(monkeypatch, dtype, spread):
    """Loss and logits' gradient equal F.cross_entropy's, rows in chunks of 1 to 4 with a ragged last one,
    for logits of std 1 and logits spread over more than 800 (past the exp floor of fp32 and fp64)."""
    from cllm4rec import losses

    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(11, 300, generator=gen, dtype=dtype) * spread).requires_grad_()
    targets = torch.randint(0, 300, (11,), generator=gen)
    want = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (want_grad,) = torch.autograd.grad(want * 0.37, logits)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for rows in (1, 4):
        monkeypatch.setattr(losses, "CACHE_BLOCK_ELEMENTS", 300 * rows)
        got = losses.vocab_cross_entropy_sum(logits, targets)
        (got_grad,) = torch.autograd.grad(got * 0.37, logits)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(got_grad, want_grad, **tol)
    if spread > 1:
        assert float((logits.detach().amax(1) - logits.detach().amin(1)).min()) > 800


def test_fused_vocab_cross_entropy_of_bf16_logits():
    """bf16 logits (a bf16 backbone's head): the loss is computed in fp32 as F.cross_entropy(logits.float())
    does; the bf16 gradient is the exact one rounded twice (stored in bf16, then scaled in backward: within
    2⁻⁷ relative, where F.cross_entropy's once-rounded one is within 2⁻⁸); under no_grad only the loss is
    computed."""
    from cllm4rec.losses import vocab_cross_entropy_sum

    gen = torch.Generator().manual_seed(6)
    logits = (torch.randn(9, 500, generator=gen) * 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 500, (9,), generator=gen)
    want = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    (want_grad,) = torch.autograd.grad(want / 7, logits)  # autograd rounds the fp32 gradient to bf16 once
    got = vocab_cross_entropy_sum(logits, targets)
    (got_grad,) = torch.autograd.grad(got / 7, logits)
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    exact = (torch.softmax(logits.detach().double(), 1) - torch.nn.functional.one_hot(targets, 500)) / 7
    assert bool(((want_grad.double() - exact).abs() <= 2**-8 * exact.abs()).all())
    assert bool(((got_grad.double() - exact).abs() <= 2**-7 * exact.abs()).all())
    with torch.no_grad():
        torch.testing.assert_close(vocab_cross_entropy_sum(logits, targets), want, rtol=1e-6, atol=1e-5)


def test_vocab_cross_entropy_names_targets_outside_the_vocabulary():
    from cllm4rec.losses import vocab_cross_entropy_sum

    with pytest.raises(ValueError, match=r"word ids in \[0, 50\), got ids from 3 to 57"):
        vocab_cross_entropy_sum(torch.zeros(2, 50), torch.tensor([3, 57]))
