"""CLLM4Rec model components: extended embeddings, heads, losses, gradients, prompts and batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm4rec.backbone import load_backbone
from cllm4rec.model import CLLM4Rec
from cllm4rec.prompts import masked_prompt, order_items
from cllm4rec.tokenization import IdTokenizer
from data_prep.processed import load_processed
from trainer.data import Corpora, bucket_batches, epoch_rng
from trainer.engine import PlainEngine

N_USERS, N_ITEMS = 6, 10


def make_model(folder, **kwargs) -> tuple[CLLM4Rec, IdTokenizer]:
    backbone, hf_tok = load_backbone(folder)
    model = CLLM4Rec(backbone, N_USERS, N_ITEMS, seed=0, **kwargs)
    return model, IdTokenizer(hf_tok, model.vocab_rows, N_USERS, N_ITEMS)


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def backbone_dir(request):
    return request.getfixturevalue(request.param)


def collab_batch(tok: IdTokenizer) -> dict[str, torch.Tensor]:
    from cllm4rec.templates import Items, interaction_prompt
    from trainer.data import pad_documents

    docs = tok.encode_documents([(interaction_prompt(0), [Items([1, 2, 3])]), (interaction_prompt(4), [Items([5, 9])])])
    return pad_documents(docs)


def content_batch(tok: IdTokenizer) -> dict[str, torch.Tensor]:
    from cllm4rec.templates import Text, biography_prompt, review_prompt
    from trainer.data import pad_documents

    docs = tok.encode_documents([(biography_prompt(2), [Text("a retired teacher who loves old films")]),
                                 (review_prompt(1, 7), [Text("great movie, loved it")])])
    return pad_documents(docs)


def test_tables_initialised_like_the_vocabulary(tiny_llama):
    model, _ = make_model(tiny_llama)
    words = model.backbone.get_input_embeddings().weight.detach()
    assert model.collab_item.shape == (N_ITEMS, words.shape[1]) and model.collab_item.dtype == torch.float32
    assert abs(float(model.collab_item.detach().std()) - float(words.std())) < 0.3 * float(words.std())
    assert torch.equal(model.collab_item, model.content_item)  # content starts at its prior mean
    assert model.collab_item.data_ptr() != model.content_item.data_ptr()
    independent, _ = make_model(tiny_llama, content_init="random")
    assert not torch.equal(independent.collab_item, independent.content_item)


def test_embedding_routes_ids_to_the_chosen_table_set(tiny_llama):
    model, tok = make_model(tiny_llama)
    ids = torch.tensor([[5, tok.user_token(3), tok.item_token(7)]])
    for which in ("collab", "content"):
        emb = model.embed(ids, which)
        user_table, item_table = model.tables(which)
        assert torch.equal(emb[0, 0], model.backbone.get_input_embeddings().weight[5])
        assert torch.equal(emb[0, 1], user_table[3]) and torch.equal(emb[0, 2], item_table[7])


def test_item_head_is_tied_to_the_collaborative_item_table(tiny_llama):
    model, tok = make_model(tiny_llama)
    batch = collab_batch(tok)
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], "collab")
    logits = model("score", **batch)["logits"]
    last = hidden[torch.arange(2), batch["lengths"] - 1]
    assert torch.allclose(logits, last @ model.collab_item.t(), atol=1e-5)
    with torch.no_grad():
        model.collab_item[4] += 1.0  # one storage: the head sees the change
    assert not torch.allclose(model("score", **batch)["logits"][:, 4], logits[:, 4])
    out_head = model.backbone.get_output_embeddings().weight
    assert out_head.data_ptr() == model.backbone.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("task,trained,untouched", [("collab", "collab", "content"), ("content", "content", "collab"),
                                                    ("rec", "collab", "content")])
def test_gradients_reach_only_the_current_tables(backbone_dir, task, trained, untouched):
    model, tok = make_model(backbone_dir)
    batch = collab_batch(tok) if task != "content" else content_batch(tok)
    if task == "rec":
        batch = {**batch, "target_rows": torch.tensor([0, 0, 1]), "target_items": torch.tensor([1, 8, 5])}
    model(task, **batch)["loss"].backward()
    for table in model.tables(trained):
        assert table.grad is not None and table.grad.abs().sum() > 0
    for table in model.tables(untouched):
        assert table.grad is None
    assert all(p.grad is None for p in model.backbone.parameters())


def test_prompt_part_carries_no_loss(tiny_llama):
    model, tok = make_model(tiny_llama)
    batch = collab_batch(tok)
    mask = model.main_part(batch["n_prompt"], batch["lengths"], batch["input_ids"].shape[1])
    targets = batch["input_ids"][:, 1:][mask]
    assert targets.tolist() == [tok.item_token(j) for j in (1, 2, 3, 5, 9)]  # first item included
    out = model("collab", **batch)
    assert out["lm_count"] == 5
    # changing the prompt's hard words changes nothing that is predicted: predictions are items only
    assert bool(tok.is_item(targets).all())


def test_mr_term_matches_the_spec_scaling(tiny_llama):
    model, tok = make_model(tiny_llama, lambda_c=0.5, lambda_l=0.1, content_init="random")
    batch = collab_batch(tok)
    out = model("collab", **batch)
    users, items = [0, 4], [1, 2, 3, 5, 9]
    expected_mr = sum(float((model.collab_user[u] - model.content_user[u]).pow(2).sum()) for u in users) + sum(
        float((model.collab_item[j] - model.content_item[j]).pow(2).sum()) for j in items)
    expected_prior = sum(float(model.collab_user[u].pow(2).sum()) for u in users) + sum(
        float(model.collab_item[j].pow(2).sum()) for j in items)
    assert float(out["mr_sum"]) == pytest.approx(expected_mr, rel=1e-5)
    assert float(out["prior_sum"]) == pytest.approx(expected_prior, rel=1e-5)
    lm = float(out["lm_sum"]) / float(out["lm_count"])
    assert float(out["loss"]) == pytest.approx(lm + 0.5 * expected_mr + 0.1 * expected_prior, rel=1e-5)


def test_steps_move_only_their_own_tables_and_never_the_backbone(tiny_llama):
    model, tok = make_model(tiny_llama)
    engine = PlainEngine(model, 1e-2, 1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine.train_step("collab", collab_batch(tok), "collab")
    after = dict(model.named_parameters())
    assert not torch.equal(before["collab_item"], after["collab_item"])
    assert torch.equal(before["content_item"], after["content_item"]) and torch.equal(before["content_user"], after["content_user"])
    engine.train_step("content", content_batch(tok), "content")
    assert not torch.equal(before["content_user"], after["content_user"])
    for name, tensor in before.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, after[name]), name


def test_lora_trains_only_adapters_and_tables(tiny_llama):
    from peft import LoraConfig, get_peft_model

    backbone, hf_tok = load_backbone(tiny_llama)
    backbone = get_peft_model(backbone, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model = CLLM4Rec(backbone, N_USERS, N_ITEMS, backbone_trainable=True)
    tok = IdTokenizer(hf_tok, model.vocab_rows, N_USERS, N_ITEMS)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("collab_", "content_")) for n in trainable)
    engine = PlainEngine(model, 1e-2, 1e-3)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    engine.train_step("collab", collab_batch(tok), "collab")
    assert all(torch.equal(t, dict(model.named_parameters())[n]) for n, t in frozen.items())


def test_reordering_changes_order_not_items():
    items = np.arange(30)
    rng = np.random.default_rng(0)
    shuffled = order_items(items, rng, shuffle=True)
    assert sorted(shuffled.tolist()) == items.tolist() and shuffled.tolist() != items.tolist()
    assert order_items(items, rng, shuffle=False).tolist() == items.tolist()


@pytest.mark.parametrize("mode", ["fixed", "bernoulli"])
@pytest.mark.parametrize("target", ["all", "dropped"])
def test_masked_prompts(mode, target):
    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 23):
        items = np.arange(100, 100 + n)
        ex = masked_prompt(items, rng, mode=mode, ratio=0.2, target=target)
        prompt = ex.prompt_items.tolist()
        assert len(set(prompt)) == len(prompt) and set(prompt) <= set(items.tolist())  # no repeats, none invented
        dropped = set(items.tolist()) - set(prompt)
        if mode == "fixed":
            assert len(dropped) == {1: 1, 2: 1, 5: 1, 23: 4}[n]  # max(1, ⌊0.2·n⌋)
        expected = sorted(items.tolist()) if target == "all" else sorted(dropped)
        assert ex.target_items.tolist() == expected
        if n == 23:
            assert prompt != sorted(prompt)  # the kept items are shuffled


def test_bernoulli_masking_drops_each_item_with_the_ratio():
    rng = np.random.default_rng(3)
    drops = [10 - masked_prompt(np.arange(10), rng, mode="bernoulli", ratio=0.2).prompt_items.shape[0]
             for _ in range(2000)]
    assert np.mean(drops) == pytest.approx(2.0, abs=0.1)  # 20000 items, 0.2 each: mean 2, standard error 0.02
    assert min(drops) == 0 and max(drops) >= 5  # not a fixed count


def test_masked_prompt_caps_items_but_keeps_them_unseen_free():
    rng = np.random.default_rng(2)
    ex = masked_prompt(np.arange(50), rng, max_items=10)
    assert ex.prompt_items.shape[0] == 10 and len(set(ex.prompt_items.tolist())) == 10


def test_corpora_batches(planted_dataset, tiny_llama):
    dataset = load_processed(planted_dataset)
    _, hf_tok = load_backbone(tiny_llama)
    tok = IdTokenizer(hf_tok, len(hf_tok) + 8, dataset.n_users, dataset.n_items)
    corpora = Corpora.build(dataset, tok, max_items=5, max_main_tokens=6)
    assert all(len(d.main_ids) <= 6 for d in corpora.content)
    batches = list(corpora.collab_batches(epoch_rng(0, "x"), 8, reorder=True))
    assert sum(b["input_ids"].shape[0] for b in batches) == dataset.n_users
    for batch in batches:
        main = batch["lengths"] - batch["n_prompt"]
        assert int(main.max()) <= 5
    fine = next(corpora.finetune_batches(epoch_rng(0, "y"), 4, mode="fixed", ratio=0.2, target="all"))
    assert fine["target_rows"].max() < fine["input_ids"].shape[0]
    # the closing hard prompt is kept even when items are capped
    ids = corpora.scoring_batch(np.array([0]), "rec", seed=0)["input_ids"][0].tolist()
    assert tok.decode(ids).endswith("will interact with")
    # same seed, same epoch → same documents
    again = list(corpora.collab_batches(epoch_rng(0, "x"), 8, reorder=True))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))


def test_entity_text_ids_add_each_entitys_reviews_on_request(planted_dataset, tiny_llama):
    """`model.content_init_reviews`: a user's words are its biography's then those of the reviews it
    wrote; an item's, its text's then those of the reviews it received; without it, reviews count for nobody."""
    dataset = load_processed(planted_dataset)
    _, hf_tok = load_backbone(tiny_llama)
    tok = IdTokenizer(hf_tok, len(hf_tok) + 8, dataset.n_users, dataset.n_items)
    corpora = Corpora.build(dataset, tok, max_items=5, max_main_tokens=6)
    words = {owner: doc.main_ids for owner, doc in zip(corpora.content_owner, corpora.content)}
    plain, with_reviews = corpora.entity_text_ids(), corpora.entity_text_ids(reviews=True)
    assert plain == {(k, u if k == "user" else j): ids for (k, u, j), ids in words.items() if k != "review"}
    reviews = [(u, j) for k, u, j in corpora.content_owner if k == "review"]
    assert reviews, "the planted dataset has reviews"
    u, j = reviews[0]
    wrote = [ids for (k, uu, _), ids in words.items() if k == "review" and uu == u]
    received = [ids for (k, _, jj), ids in words.items() if k == "review" and jj == j]
    assert with_reviews["user", u] == plain.get(("user", u), []) + sum(wrote, [])
    assert with_reviews["item", j] == plain.get(("item", j), []) + sum(received, [])


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=2000)
    batches = bucket_batches(lengths, 20, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(20 * lengths[i : i + 20].max() for i in range(0, 2000, 20))
    assert padded < 0.7 * random_padded


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
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
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
