"""CLLM4Rec model components: extended embeddings, heads, the loss and its gradients, steps, prompts and
batches (the fused losses themselves: test_losses.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm4rec.backbone import load_backbone
from cllm4rec.model import CLLM4Rec
from cllm4rec.prompts import masked_prompt, order_items
from cllm4rec.tasks import TableSet, Task
from cllm4rec.tokenization import IdTokenizer
from data_prep.processed import load_processed
from trainer.data import Corpora, bucket_batches, epoch_rng
from trainer.engine import PlainEngine
from trainer.phases import StepKind

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
    for which in TableSet:
        emb = model.embed(ids, which)
        user_table, item_table = model.tables(which)
        assert torch.equal(emb[0, 0], model.backbone.get_input_embeddings().weight[5])
        assert torch.equal(emb[0, 1], user_table[3]) and torch.equal(emb[0, 2], item_table[7])


def test_item_head_is_tied_to_the_collaborative_item_table(tiny_llama):
    model, tok = make_model(tiny_llama)
    batch = collab_batch(tok)
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], TableSet.COLLAB)
    logits = model(Task.SCORE, **batch)["logits"]
    last = hidden[torch.arange(2), batch["lengths"] - 1]
    assert torch.allclose(logits, last @ model.collab_item.t(), atol=1e-5)
    with torch.no_grad():
        model.collab_item[4] += 1.0  # one storage: the head sees the change
    assert not torch.allclose(model(Task.SCORE, **batch)["logits"][:, 4], logits[:, 4])
    out_head = model.backbone.get_output_embeddings().weight
    assert out_head.data_ptr() == model.backbone.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("task,trained,untouched", [
    (Task.COLLAB_LM, TableSet.COLLAB, TableSet.CONTENT), (Task.CONTENT_LM, TableSet.CONTENT, TableSet.COLLAB),
    (Task.RECOMMEND, TableSet.COLLAB, TableSet.CONTENT)])
def test_gradients_reach_only_the_current_tables(backbone_dir, task, trained, untouched):
    model, tok = make_model(backbone_dir)
    batch = collab_batch(tok) if task is not Task.CONTENT_LM else content_batch(tok)
    if task is Task.RECOMMEND:
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
    out = model(Task.COLLAB_LM, **batch)
    assert out["lm_count"] == 5
    # changing the prompt's hard words changes nothing that is predicted: predictions are items only
    assert bool(tok.is_item(targets).all())


def test_mr_term_matches_the_spec_scaling(tiny_llama):
    model, tok = make_model(tiny_llama, lambda_c=0.5, lambda_l=0.1, content_init="random")
    batch = collab_batch(tok)
    out = model(Task.COLLAB_LM, **batch)
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
    engine.train_step(StepKind.L_STEP, collab_batch(tok))
    after = dict(model.named_parameters())
    assert not torch.equal(before["collab_item"], after["collab_item"])
    assert torch.equal(before["content_item"], after["content_item"]) and torch.equal(before["content_user"], after["content_user"])
    engine.train_step(StepKind.C_STEP, content_batch(tok))
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
    engine.train_step(StepKind.L_STEP, collab_batch(tok))
    assert all(torch.equal(t, dict(model.named_parameters())[n]) for n, t in frozen.items())


def test_reordering_changes_order_not_items():
    items = np.arange(30)
    rng = np.random.default_rng(0)
    shuffled = order_items(items, rng, shuffle=True)
    assert sorted(shuffled.tolist()) == items.tolist() and shuffled.tolist() != items.tolist()
    assert order_items(items, rng, shuffle=False).tolist() == items.tolist()


@pytest.mark.parametrize("mode", ["fixed", "bernoulli", "uniform"])
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


def test_uniform_masking_keeps_one_to_what_fixed_keeps_uniformly():
    """20 items: "fixed" keeps 16; "uniform" keeps 1..16, each about 1/16 of the time (4000 draws: 250 each,
    standard error ~15)."""
    rng = np.random.default_rng(4)
    kept = np.array([masked_prompt(np.arange(20), rng, mode="uniform", ratio=0.2).prompt_items.shape[0]
                     for _ in range(4000)])
    counts = np.bincount(kept, minlength=17)
    assert counts[0] == 0 and kept.max() == 16 and counts[1:].min() > 180 and counts[1:].max() < 320


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
