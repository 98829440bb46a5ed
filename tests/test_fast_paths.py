"""Each performance path gives the results of the plain path it replaces, within a stated tolerance:
fused item softmax inside the model, fused Adam, length bucketing, bf16 backbone compute, batched
whole-catalogue scoring. (The fused softmax kernel itself is tested in test_model.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cllm4rec.backbone import load_backbone
from cllm4rec.model import CLLM4Rec
from cllm4rec.rms_norm import fuse_rms_norms
from cllm4rec.tasks import TableSet, Task
from cllm4rec.templates import Items, Text, biography_prompt, interaction_prompt, recommendation_prompt
from cllm4rec.tokenization import Document, IdTokenizer
from trainer.data import bucket_batches, pad_documents
from trainer.engine import PlainEngine, TableSetAdam
from trainer.phases import StepKind

N_USERS, N_ITEMS = 7, 30


def build(folder, dtype=torch.float32, attention=None, fused_norm=True) -> tuple[CLLM4Rec, IdTokenizer]:
    """A model over the backbone in `folder`, its RMSNorms fused as trainer/build.py does by default."""
    backbone, hf_tok = load_backbone(folder, dtype=dtype, attention=attention)
    if fused_norm:
        fuse_rms_norms(backbone)
    model = CLLM4Rec(backbone, N_USERS, N_ITEMS, seed=0, init_std=0.5)
    return model, IdTokenizer(hf_tok, model.vocab_rows, N_USERS, N_ITEMS)


def batches(tok: IdTokenizer) -> dict[Task, dict[str, torch.Tensor]]:
    """One right-padded batch per task (rows of different lengths)."""
    collab = pad_documents(tok.encode_documents([(interaction_prompt(0), [Items([1, 2, 3, 29, 4])]),
                                                 (interaction_prompt(5), [Items([7, 8])])]))
    content = pad_documents(tok.encode_documents([(biography_prompt(2), [Text("a teacher who loves films")]),
                                                  (biography_prompt(6), [Text("plays chess")])]))
    ids = tok.encode_segments([recommendation_prompt(1, [3, 4, 5]), recommendation_prompt(3, [9])])
    rec = pad_documents([Document(x, len(x)) for x in ids])
    rec["target_rows"], rec["target_items"] = torch.tensor([0, 0, 1]), torch.tensor([6, 20, 11])
    return {Task.COLLAB_LM: collab, Task.CONTENT_LM: content, Task.RECOMMEND: rec}


def assert_same_training_step(reference: CLLM4Rec, other: CLLM4Rec, tok: IdTokenizer, tol: float) -> None:
    """Every task's loss (rtol = atol = tol) and its table set's gradients (rtol 10·tol) agree between
    two models holding the same weights; both run a training-mode step."""
    for task, batch in batches(tok).items():
        which = task.table_set
        outs = []
        for model in (reference, other):
            model.train(True)
            model.zero_grad(set_to_none=True)
            out = model(task, **batch)
            out["loss"].backward()
            outs.append((out["loss"].detach(), [p.grad for p in model.tables(which)]))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=tol, atol=tol)
        for got, want in zip(outs[1][1], outs[0][1]):
            torch.testing.assert_close(got, want, rtol=10 * tol, atol=1e-6)


def plain_item_loss(model: CLLM4Rec, task: Task, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The item-space loss sum written the plain way: whole logits, log-softmax, gather."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], TableSet.COLLAB)
    if task is Task.RECOMMEND:
        logits = model.last_position_item_logits(hidden, batch["lengths"])
        rows, items = batch["target_rows"], batch["target_items"]
    else:
        mask = model.main_part(batch["n_prompt"], batch["lengths"], batch["input_ids"].shape[1])
        logits = hidden[:, :-1][mask].float() @ model.collab_item.t()
        items = batch["input_ids"][:, 1:][mask] - model.vocab_rows - model.n_users
        rows = torch.arange(items.shape[0])
    return -torch.log_softmax(logits, dim=1)[rows, items].sum()


@pytest.mark.parametrize("task", [Task.COLLAB_LM, Task.RECOMMEND])
def test_model_item_losses_equal_the_plain_computation(tiny_llama, task):
    """The model's fused item softmax (collaborative LM and multinomial finetuning head): same loss and
    same gradients of both table sets' item and user rows as whole-logits autograd (fp32, 1e-5)."""
    model, tok = build(tiny_llama)
    batch = batches(tok)[task]
    fused = model(task, **batch)["lm_sum"]
    model(task, **batch, lm_denominator=1.0)["loss"].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    plain = plain_item_loss(model, task, batch)
    mr, prior = model.regulariser_sums(batch["input_ids"], TableSet.COLLAB)
    (plain + model.lambda_c * mr + model.lambda_l * prior).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-5, atol=1e-5)
    assert set(got) == set(want) == {"collab_user", "collab_item"}
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_fused_adam_equals_the_per_tensor_adam():
    """TableSetAdam (fused kernel) = torch Adam's per-tensor loop over 5 steps (1e-6); inactive groups stay put."""
    gen = torch.Generator().manual_seed(0)
    start = {n: torch.randn(shape, generator=gen) for n, shape in (("a", (50, 8)), ("b", (30, 8)), ("c", (20, 8)))}
    grads = [{n: torch.randn(t.shape, generator=gen) for n, t in start.items()} for _ in range(5)]
    fused = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
    plain = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
    opt = TableSetAdam({"collab": [fused["a"], fused["b"]], "content": [fused["c"]]}, lr=0.01)
    opt.param_groups[0]["active"] = True
    reference = torch.optim.Adam([plain["a"], plain["b"]], lr=0.01, foreach=False)
    assert opt.defaults["fused"]
    for step in grads:
        for params in (fused, plain):
            for n, p in params.items():
                p.grad = step[n].clone()
        opt.step()
        reference.step()
    for n in ("a", "b"):
        torch.testing.assert_close(fused[n].detach(), plain[n].detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(fused["c"].detach(), start["c"])


def test_kept_table_gradients_train_as_autograd_does(tiny_llama):
    """PlainEngine builds the tables' gradients in kept buffers (head gradient written in, gathered rows
    added after backward) = autograd's fresh gradients: bitwise the same gradients and tables (the same
    sums in the same order) through 11 steps of every kind, table sets alternating, each batch on other
    users than the one before (a row of the last step left in a kept buffer would show)."""
    (fast, tok), (reference, _) = build(tiny_llama), build(tiny_llama)
    engines = [PlainEngine(fast, 0.05, 0.02), PlainEngine(reference, 0.05, 0.02, kept_gradients=False)]
    assert engines[1].table_access.gradients is None
    data = batches(tok)
    schedule = [StepKind.L_STEP] * 3 + [StepKind.C_STEP] * 2 + [StepKind.L_STEP, StepKind.FINETUNE, StepKind.FINETUNE,
                                                                StepKind.FINETUNE_CONTENT, StepKind.FINETUNE, StepKind.L_STEP]
    kept = []
    for step in schedule:
        for engine in engines:
            engine.train_step(step, dict(data[step.task]))
        which = step.trains
        for got, want in zip(fast.tables(which), reference.tables(which)):
            torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0, msg=f"{step}: gradient")
        for name, table in fast.id_tables().items():
            torch.testing.assert_close(table, reference.id_tables()[name], rtol=0, atol=0, msg=f"{step}: {name}")
        kept.append([t.grad.data_ptr() for t in fast.tables(which)])
    assert kept[0] == kept[1] == kept[2]  # the same two buffers from step to step (user: rows; item: head)
    assert sorted(map(id, engines[0].table_access.gradients.buffers)) == sorted(map(id, fast.tables(TableSet.COLLAB)))  # content's dropped


def test_bucketing_keeps_padding_under_ten_percent():
    """Documents of 20..700 items (ML-100K's range, long-tailed) in batches of 20: bucketing pads
    ≤ 10% of the tokens where random batches pad far more; every document is used once."""
    rng = np.random.default_rng(0)
    lengths = np.minimum(20 + rng.lognormal(3.5, 1.0, size=943).astype(int), 700)
    bucketed = bucket_batches(lengths, 20, np.random.default_rng(1))
    unbucketed = bucket_batches(lengths, 20, np.random.default_rng(1), window=1)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(943))

    def padding(batch_list):
        return 1 - lengths.sum() / sum(len(b) * lengths[b].max() for b in batch_list)

    assert padding(bucketed) <= 0.10 < padding(unbucketed)


def test_bf16_backbone_matches_fp32_within_tolerance(tiny_llama):
    """bf16 backbone compute with fp32 tables: every task's loss within 2% of the fp32 model's, table
    gradients aligned (cosine > 0.99); tables, their gradients and the Adam state stay fp32."""
    model32, tok = build(tiny_llama, torch.float32)
    model16, _ = build(tiny_llama, torch.bfloat16)
    assert model16.compute_dtype == torch.bfloat16 and model16.collab_item.dtype == torch.float32
    for task, batch in batches(tok).items():
        which = task.table_set
        losses, grads = [], []
        for model in (model32, model16):
            model.zero_grad(set_to_none=True)
            out = model(task, **batch)
            out["loss"].backward()
            losses.append(float(out["loss"].detach()))
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.tables(which)]))
        assert abs(losses[1] - losses[0]) <= 0.02 * abs(losses[0]), (task, losses)
        assert grads[1].dtype == torch.float32
        assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.99, task
    opt = TableSetAdam({TableSet.COLLAB.value: model16.table_parameters(TableSet.COLLAB)}, lr=0.01)
    opt.param_groups[0]["active"] = True
    opt.step()
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.float32}


def test_bf16_head_gradients_train_as_fp32_ones(tiny_llama, monkeypatch):
    """model.head_gradient_dtype=bfloat16 on a bf16 backbone: the item-space losses are the fp32 head's
    bit for bit, and the tables' gradients are hardly further from an fp32 model's than the fp32 head's
    are (the bf16 backbone's own rounding moves them 0.4–1.1% here; the bf16 head adds ≤ 0.25%)."""
    from cllm4rec import losses

    monkeypatch.setattr(losses, "NARROW_PRODUCTS_MIN_ROWS", 1)  # these batches have 2–9 softmax rows
    reference, tok = build(tiny_llama, torch.float32)
    model, _ = build(tiny_llama, torch.bfloat16)
    for task in (Task.COLLAB_LM, Task.RECOMMEND):
        outs = []
        for run, head_dtype in ((reference, None), (model, None), (model, torch.bfloat16)):
            run.head_gradient_dtype = head_dtype
            run.zero_grad(set_to_none=True)
            out = run(task, **batches(tok)[task])
            out["loss"].backward()
            outs.append((out["lm_sum"], [p.grad.clone() for p in run.tables(TableSet.COLLAB)]))
        (_, exact), (fp32_sum, fp32_head), (bf16_sum, bf16_head) = outs
        assert torch.equal(bf16_sum, fp32_sum), task
        for want, fp32, got in zip(exact, fp32_head, bf16_head):
            assert float((got - want).norm() / want.norm()) <= float((fp32 - want).norm() / want.norm()) + 2.5e-3, task
            assert not torch.equal(got, fp32)  # the bf16 products did run


def test_head_gradient_dtype_follows_the_config(planted_dataset, tiny_llama, tmp_path):
    """model.head_gradient_dtype=auto: bf16 products with a bf16 backbone, fp32 with an fp32 one; an
    explicit value is used as given."""
    from conftest import tiny_overrides
    from trainer.build import build_run
    from trainer.config_loading import load_config

    for backbone_dtype, value, want in (("bfloat16", "auto", torch.bfloat16), ("float32", "auto", torch.float32),
                                        ("bfloat16", "float32", torch.float32)):
        overrides = {"model.dtype": backbone_dtype, "model.head_gradient_dtype": value}
        config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **overrides))
        assert build_run(config).model.head_gradient_dtype == want


def test_batched_scoring_equals_one_user_at_a_time(tiny_llama):
    """Whole-catalogue scores of a padded batch of prompts (one matrix product) equal each prompt
    scored alone, so rankings do not depend on batching or padding."""
    model, tok = build(tiny_llama)
    prompts = [recommendation_prompt(u, items) for u, items in ((0, [1, 2, 3, 4, 5, 6]), (2, [7]), (4, [8, 9, 10]))]
    ids = tok.encode_segments(prompts)
    with torch.no_grad():
        together = model(Task.SCORE, **pad_documents([Document(x, len(x)) for x in ids]))["logits"]
        alone = torch.cat([model(Task.SCORE, **pad_documents([Document(x, len(x))]))["logits"] for x in ids])
    assert together.shape == (3, N_ITEMS)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(together.argsort(dim=1, descending=True)[:, :5], alone.argsort(dim=1, descending=True)[:, :5])


@pytest.mark.parametrize("backbone", ["tiny_llama", "tiny_gpt2"])
def test_eager_attention_equals_sdpa(backbone, request):
    """The eager attention kernel (the CPU default, model.attention=auto) gives the losses and table
    gradients of PyTorch's SDPA kernel on right-padded batches (fp32, 1e-5)."""
    folder = request.getfixturevalue(backbone)
    eager, tok = build(folder, attention="eager")
    sdpa, _ = build(folder, attention="sdpa")
    assert eager.backbone.config._attn_implementation == "eager" and sdpa.backbone.config._attn_implementation == "sdpa"
    assert_same_training_step(sdpa, eager, tok, 1e-5)


def test_fused_rms_norm_trains_as_transformers_norm(tiny_llama):
    """model.fused_norm: every task's loss and table gradients equal those through transformers'
    LlamaRMSNorm modules (fp32, 1e-6)."""
    reference, tok = build(tiny_llama, fused_norm=False)
    fused, _ = build(tiny_llama)
    assert_same_training_step(reference, fused, tok, 1e-6)


def test_attention_follows_the_config(planted_dataset, tiny_llama, tmp_path):
    """model.attention=auto builds the eager kernel on CPU; an explicit value is used as given."""
    from conftest import tiny_overrides
    from trainer.build import build_run
    from trainer.config_loading import load_config

    for value, want in (("auto", "eager"), ("sdpa", "sdpa")):
        config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **{"model.attention": value}))
        assert build_run(config).model.backbone.config._attn_implementation == want


@pytest.mark.parametrize("k", [1, 4, 12, 40])
def test_topk_fast_path_equals_the_full_sort(k):
    """topk_excluding (one topk, exact tie rule only on rows cut inside a tie) gives exactly the
    ranking of a full sort by (−score, item index) over the non-excluded items, with heavy ties."""
    from cllm4rec.interactions import UserItems
    from cllm4rec.metrics import PAD, topk_excluding

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    train = UserItems.from_lists([rng.permutation(30)[: rng.integers(0, 25)] for _ in range(50)], 30)
    rows = np.arange(50)
    got = topk_excluding(torch.from_numpy(scores), train, rows, k).tolist()
    for u in rows:
        seen = set(train.row(u).tolist())
        ranking = sorted((j for j in range(30) if j not in seen and scores[u, j] != -np.inf), key=lambda j: (-scores[u, j], j))
        want = ranking[:k] + [PAD] * (min(k, 30) - len(ranking[:k]))
        assert got[u] == want, u


@pytest.mark.parametrize("which", list(TableSet))
def test_rows_gathered_once_give_the_per_occurrence_sums(tiny_llama, which):
    """MR and prior from each table's distinct rows weighted by their counts equal the sums over every
    occurrence (repeated users and items), with the same table gradients (fp32, 1e-6)."""
    model, tok = build(tiny_llama)
    with torch.no_grad():  # content tables start equal to the collaborative ones: move them apart
        for table in model.tables(TableSet.CONTENT):
            table.add_(torch.randn(table.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    ids = batches(tok)[Task.RECOMMEND]["input_ids"].clone()
    ids[1, 3:6] = ids[0, 3:6]  # repeat some ID tokens across rows
    mr, prior = model.regulariser_sums(ids, which)
    (mr + 0.5 * prior).backward()
    got = [p.grad.clone() for p in model.tables(which)]
    model.zero_grad(set_to_none=True)
    flat = ids.reshape(-1)
    users = flat[(flat >= model.vocab_rows) & (flat < model.vocab_rows + N_USERS)] - model.vocab_rows
    items = flat[flat >= model.vocab_rows + N_USERS] - model.vocab_rows - N_USERS
    assert len(set(items.tolist())) < len(items)  # there are repeats
    (user_table, item_table), (other_user, other_item) = model.tables(which), model.tables(which.other)
    want_mr = ((user_table[users] - other_user[users].detach()) ** 2).sum() + (
        (item_table[items] - other_item[items].detach()) ** 2).sum()
    want_prior = (user_table[users] ** 2).sum() + (item_table[items] ** 2).sum() if which is TableSet.COLLAB else 0 * want_mr
    (want_mr + 0.5 * want_prior).backward()
    torch.testing.assert_close(mr, want_mr.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(prior, want_prior.detach(), rtol=1e-6, atol=1e-6)
    for g, p in zip(got, model.tables(which)):
        torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_compiled_backbone_equals_eager(tiny_llama):
    """model.compile: the torch.compile'd backbone body gives the eager losses and table gradients
    for every task on padded batches (fp32, 1e-5), and the module tree holds each weight once."""
    eager, tok = build(tiny_llama)
    compiled, _ = build(tiny_llama)
    compiled.compile_backbone()
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert_same_training_step(eager, compiled, tok, 1e-5)


def test_compile_is_refused_under_deepspeed(planted_dataset, tiny_llama, tmp_path):
    from conftest import tiny_overrides
    from trainer.config import ConfigError
    from trainer.config_loading import load_config
    from trainer.distributed import LOCAL
    from trainer.engine_setup import build_engine
    from trainer.schedule import PLANNED_STEPS, step_plans

    config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **{"model.compile": True}))
    with pytest.raises(ConfigError, match="model.compile=true works with the plain engine only"):
        build_engine(config, LOCAL, None, torch.device("cpu"), (tmp_path / "ds.json", {}),
                     step_plans(config, dict.fromkeys(PLANNED_STEPS, 1)))


def test_recommend_in_length_sorted_batches_keeps_the_callers_order(tiny_llama):
    """recommend() scores users in batches of similar prompt length and returns rows in the order
    asked for: the same top-5 and scores (fp32, 1e-5) as one user at a time."""
    from cllm4rec.interactions import UserItems
    from trainer.data import Corpora
    from trainer.engine import PlainEngine
    from trainer.evaluate import recommend

    model, tok = build(tiny_llama)
    train = UserItems.from_lists([[1, 2, 3, 4, 5, 6, 7], [8], [], [9, 10, 11], [12, 13], [0], [14, 15, 16, 17]], N_ITEMS)
    corpora = Corpora(tok, train, [], [], max_items=128)
    engine = PlainEngine(model, 1e-3, 1e-3)
    users = np.array([3, 0, 6, 1, 2, 5])
    batched = recommend(engine, corpora, users, 5, prompt="rec", seed=0, batch_size=4)
    single = recommend(engine, corpora, users, 5, prompt="rec", seed=0, batch_size=1)
    assert np.array_equal(batched[0], single[0])
    np.testing.assert_allclose(batched[1], single[1], rtol=1e-5, atol=1e-5)
    for row, user in enumerate(users):
        assert not set(batched[0][row]) & set(train.row(user).tolist())
    empty = recommend(engine, corpora, np.array([], dtype=np.int64), 5, prompt="rec", seed=0)
    assert empty[0].shape == (0, 5)


@pytest.mark.parametrize("backbone", ["tiny_llama", "tiny_gpt2"])
def test_activation_checkpointing_recomputes_layers_with_equal_results(backbone, request):
    """model.activation_checkpointing: every decoder layer runs twice per training step (forward, and
    again in backward) and once when scoring; losses and table gradients equal the plain model's (1e-6)."""
    folder = request.getfixturevalue(backbone)
    plain, tok = build(folder)
    checkpointed, _ = build(folder)
    checkpointed.enable_activation_checkpointing()
    inner = next(checkpointed.checkpointed_layers[0].children())  # the recompute calls the layer's forward, not __call__
    calls = []
    inner.register_forward_pre_hook(lambda module, args: calls.append(1))
    assert_same_training_step(plain, checkpointed, tok, 1e-6)
    assert len(calls) == 2 * len(batches(tok))
    assert not any(m.training for m in checkpointed.backbone.modules() if m not in checkpointed.checkpointed_layers)
    checkpointed.train(False)
    calls.clear()
    with torch.no_grad():
        checkpointed(Task.SCORE, **batches(tok)[Task.RECOMMEND])
    assert len(calls) == 1
