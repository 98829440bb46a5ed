"""The optimisation knobs of a run: per-phase λ_c and its reduction, learning rates and their schedules,
the tables' optimizer, batch shuffling across epochs and BOS (trainer/schedule.py, cllm4rec/row_adam.py,
trainer/engine.py, trainer/data.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cllm4rec.tasks import Task
from conftest import tiny_overrides
from test_model import collab_batch, make_model
from trainer.config import ConfigError
from trainer.config_loading import load_config
from trainer.data import bucket_batches
from trainer.engine import PlainEngine
from trainer.phases import Phase, StepKind
from trainer.pipeline import TrainingRun, train
from trainer.schedule import StepPlan, step_plans

WARMUP, C_STEP, L_STEP = StepKind.WARMUP, StepKind.C_STEP, StepKind.L_STEP
FINETUNE, FINETUNE_CONTENT = StepKind.FINETUNE, StepKind.FINETUNE_CONTENT
STEPS = {L_STEP: 10, C_STEP: 4, FINETUNE: 5}


def test_lr_warms_up_then_follows_a_half_cosine_to_zero():
    plan = StepPlan(0.1, 0.0, lr_schedule="cosine", warmup_steps=4, total_steps=14)
    lrs = [plan.lr_at(s) for s in range(15)]
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.05) and lrs[14] == pytest.approx(0.0, abs=1e-12)
    assert lrs[6] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.2)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # never rises after the warm-up
    constant = StepPlan(0.1, 0.0, warmup_steps=2, total_steps=14)
    assert [constant.lr_at(s) for s in (0, 1, 2, 13, 99)] == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1])


def test_mr_weights_of_sum_and_mean_reductions():
    assert StepPlan(1e-3, 0.5, 0.2).weights(40) == (0.5, 0.2)
    assert StepPlan(1e-3, 0.5, 0.2, mr_mean=True).weights(40) == pytest.approx((0.0125, 0.005))
    assert StepPlan(1e-3, 0.5, mr_mean=True).weights(0) == (0.5, 0.0)  # no ID token: no term


def test_step_plans_follow_the_config():
    config = load_config(None, ["pretrain.lambda_c=0.3", "pretrain.lr=0.01", "pretrain.content_lr=0.02",
                                "finetune.lr=0.005", "pretrain.warmup_epochs=2", "pretrain.rounds=3", "finetune.epochs=7",
                                "finetune.lr_schedule=cosine", "finetune.lr_warmup_steps=3", "pretrain.mr_reduction=mean"])
    plans = step_plans(config, STEPS)
    assert plans[WARMUP].lambda_c == 0.0 and plans[C_STEP].lambda_c == 0.3  # no MR in the authors' warm-up
    assert plans[FINETUNE].lambda_c == plans[FINETUNE_CONTENT].lambda_c == 0.3  # finetune.lambda_c null: pretrain's
    assert (plans[L_STEP].lr, plans[WARMUP].lr, plans[C_STEP].lr, plans[FINETUNE].lr) == (0.01, 0.02, 0.02, 0.005)
    assert plans[C_STEP].total_steps == plans[WARMUP].total_steps == (2 + 3) * 4  # one schedule for warm-up + C-steps
    assert plans[L_STEP].total_steps == 30 and plans[FINETUNE].total_steps == 35 and plans[FINETUNE_CONTENT].total_steps == 28
    assert plans[FINETUNE].lr_schedule == "cosine" and plans[FINETUNE].warmup_steps == 3
    assert plans[L_STEP].lr_schedule == "constant"
    assert all(p.mr_mean for p in plans.values())
    tuned = step_plans(load_config(None, ["pretrain.lambda_c=0.3", "finetune.lambda_c=0.01", "pretrain.warmup_mr=true"]), STEPS)
    assert tuned[WARMUP].lambda_c == 0.3 and tuned[FINETUNE].lambda_c == tuned[FINETUNE_CONTENT].lambda_c == 0.01
    cf = step_plans(load_config(None, ["ablation=cf", "finetune.lambda_c=1.0"]), STEPS)
    assert cf[L_STEP].lambda_c == cf[FINETUNE].lambda_c == 0.0  # LLM-CF has no MR in any phase


@pytest.mark.parametrize("override, key", [("data.bucket_window=0", "data.bucket_window"),
                                           ("finetune.lambda_c=-1", "finetune.lambda_c"),
                                           ("pretrain.lr_warmup_steps=-2", "pretrain.lr_warmup_steps"),
                                           ("pretrain.mr_reduction=max", "pretrain.mr_reduction"),
                                           ("finetune.lr_schedule=linear", "finetune.lr_schedule"),
                                           ("model.bos=sometimes", "model.bos"),
                                           ("pretrain.collab_from_content_tables=items",
                                            "pretrain.collab_from_content_tables"),
                                           ("pretrain.collab_from_content_token_alpha=0",
                                            "pretrain.collab_from_content_token_alpha")])
def test_knob_values_out_of_range_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_mean_reduction_divides_mr_by_the_id_occurrences(tiny_llama):
    model, tok = make_model(tiny_llama, lambda_c=0.5, content_init="random")
    batch = collab_batch(tok)
    occurrences = model.id_occurrences(batch["input_ids"])
    assert occurrences == 2 + 5  # two user tokens, five item tokens
    plan = StepPlan(1e-3, 0.5, mr_mean=True)
    engine = PlainEngine(model, 1e-3, 1e-3, plans={L_STEP: plan})
    with torch.no_grad():
        reference = model(Task.COLLAB_LM, **batch)
    out = engine.train_step(L_STEP, batch)
    assert out["mr_loss"] == pytest.approx(0.5 * float(reference["mr_sum"]) / occurrences, rel=1e-5)
    lm = float(reference["lm_sum"]) / float(reference["lm_count"])
    assert out["loss"] == pytest.approx(lm + out["mr_loss"], rel=1e-5)


def test_engine_applies_the_schedule_and_restarts_it_per_stage(tiny_llama):
    model, tok = make_model(tiny_llama)
    plans = {L_STEP: StepPlan(0.1, 0.0, lr_schedule="cosine", warmup_steps=1, total_steps=3),
             FINETUNE: StepPlan(0.01, 0.0, warmup_steps=2)}
    engine = PlainEngine(model, 1.0, 1.0, plans=plans)
    group = next(g for g in engine.optimizer.param_groups if g["name"] == "collab")
    seen = []
    for _ in range(3):
        engine.train_step(L_STEP, collab_batch(tok))
        seen.append(group["lr"])
    assert seen == pytest.approx([0.1, 0.1, 0.05])
    engine.activate(FINETUNE)
    assert group["sched_step"] == 0 and group["lr"] == pytest.approx(0.005) and not engine.optimizer.state.get(model.collab_item)


def test_a_small_bucket_window_draws_new_batches_every_epoch():
    lengths = np.random.default_rng(7).permutation(100)  # distinct lengths: sorting decides every batch

    def batch_sets(window: int, epoch: int) -> set[frozenset[int]]:
        return {frozenset(b.tolist()) for b in bucket_batches(lengths, 10, np.random.default_rng(epoch), window)}

    assert batch_sets(50, 0) == batch_sets(50, 1)  # one window holds the whole corpus: same batches, new order
    assert batch_sets(1, 0) != batch_sets(1, 1)
    assert sorted(i for b in batch_sets(1, 0) for i in b) == list(range(100))


def test_bos_switch_prepends_the_backbone_bos(planted_dataset, tiny_llama, tmp_path):
    from trainer.build import build_run

    for bos in (True, False):
        parts = build_run(load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **{"model.bos": bos})))
        batch = parts.corpora.scoring_batch(np.array([0, 1]), "rec", seed=0)
        starts_with_bos = bool((batch["input_ids"][:, 0] == parts.tokenizer.tokenizer.bos_token_id).all())
        assert starts_with_bos == bos
        first = parts.tokenizer.is_user(batch["input_ids"][:, int(bos)])
        assert bool(first.all())  # the user token follows the BOS (or opens the prompt)


def test_collab_tables_start_from_the_warmed_up_content_tables(planted_dataset, tiny_llama, tmp_path):
    """pretrain.collab_from_content copies the content tables into the collaborative ones at the end of
    the warm-up; without it the collaborative tables keep their init while the content ones move. With
    `collab_from_content_tables: users` and a token alpha, only the user rows are set, to token-like
    copies of the content rows (each at the backbone's mean word norm); the item rows keep their init."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cllm4rec.table_init import token_like_rows

    def tables(name: str, **overrides) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        overrides = {"pretrain.warmup_epochs": 1, "pretrain.rounds": 0, "finetune.enabled": False, "data.reviews": False,
                     "baselines.mostpop": False, "baselines.multivae": False, "baselines.ease": False, **overrides}
        train(load_config(None, tiny_overrides(planted_dataset, tiny_llama, out, **overrides)), progress=False)
        return load_file(str(out / "model" / "tables.safetensors"))

    copied, kept = tables("copied", **{"pretrain.collab_from_content": True}), tables("kept")
    token = tables("token", **{"pretrain.collab_from_content": True, "pretrain.collab_from_content_tables": "users",
                               "pretrain.collab_from_content_token_alpha": 0.25})
    for kind in ("user", "item"):
        assert torch.equal(copied[f"collab_{kind}"], copied[f"content_{kind}"])
        assert torch.equal(copied[f"content_{kind}"], kept[f"content_{kind}"])  # the warm-up itself is unchanged
        assert not torch.allclose(kept[f"collab_{kind}"], kept[f"content_{kind}"])
    words = AutoModelForCausalLM.from_pretrained(tiny_llama).get_input_embeddings()
    torch.testing.assert_close(token["collab_user"], token_like_rows(kept["content_user"], words, 0.25))
    torch.testing.assert_close(token["collab_user"].norm(dim=1),
                               words.weight.detach().norm(dim=1).mean().expand(token["collab_user"].shape[0]))
    assert torch.equal(token["collab_item"], kept["collab_item"])


def test_token_like_rows_keep_what_tells_rows_apart_at_a_words_size():
    """token_like_rows: every row at the mean word norm; the part the rows share is replaced by the mean
    word embedding (adding a common vector to every row changes nothing); rows equal to their mean become
    the mean word embedding rescaled; a larger alpha turns each row further toward its own direction."""
    from torch import nn

    from cllm4rec.table_init import token_like_rows

    torch.manual_seed(0)
    words = nn.Embedding(50, 8)
    word_norm = words.weight.norm(dim=1).mean()
    mean_word = words.weight.mean(dim=0)
    rows = torch.randn(6, 8) * 0.1 + torch.randn(8) * 3  # small differences around a large common part
    out = token_like_rows(rows, words, 0.25)
    torch.testing.assert_close(out.norm(dim=1), word_norm.detach().expand(6))
    torch.testing.assert_close(token_like_rows(rows + 5.0, words, 0.25), out, rtol=0, atol=1e-4)
    same = token_like_rows(torch.ones(3, 8), words, 0.25)
    torch.testing.assert_close(same, (mean_word / mean_word.norm() * word_norm).detach().expand(3, 8))
    centred = nn.functional.normalize(rows - rows.mean(dim=0), dim=1)
    for small, large in ((0.1, 0.5), (0.5, 2.0)):
        closer = nn.functional.cosine_similarity(token_like_rows(rows, words, large), centred)
        assert bool((closer > nn.functional.cosine_similarity(token_like_rows(rows, words, small), centred)).all())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_knobs_resume_exactly(planted_dataset, tiny_llama, tmp_path, monkeypatch):
    """A run with every knob set, killed in its first finetuning epoch and resumed, reproduces the
    uninterrupted run's history (the schedules' positions travel with the optimizer state)."""
    knobs = {"pretrain.warmup_epochs": 2, "pretrain.rounds": 1, "finetune.epochs": 2, "data.reviews": False,
             "baselines.multivae": False, "baselines.ease": False, "pretrain.mr_reduction": "mean", "pretrain.lambda_c": 2.0,
             "finetune.lambda_c": 0.5, "pretrain.warmup_mr": True, "pretrain.content_lr": 0.02, "pretrain.lr_schedule": "cosine",
             "pretrain.lr_warmup_steps": 2, "finetune.lr_schedule": "cosine", "finetune.lr_warmup_steps": 3,
             "data.bucket_window": 1, "model.bos": True, "checkpoint.every_steps": 3, "model.table_optimizer": "row_adam",
             "pretrain.collab_from_content": True, "pretrain.collab_from_content_token_alpha": 0.25}

    def run(out, interrupt: bool):
        config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, out, **knobs))
        if interrupt:
            original = TrainingRun.run_unit

            def killed(self, unit, index):
                if unit.phase is Phase.FINETUNE:
                    raise KeyboardInterrupt
                return original(self, unit, index)

            monkeypatch.setattr(TrainingRun, "run_unit", killed)
            with pytest.raises(KeyboardInterrupt):
                train(config, progress=False)
            monkeypatch.setattr(TrainingRun, "run_unit", original)
            return train(config, start="resume", progress=False)
        return train(config, progress=False)

    whole, resumed = run(tmp_path / "whole", False), run(tmp_path / "resumed", True)
    history = [json.loads((tmp_path / name / "results.json").read_text())["history"] for name in ("whole", "resumed")]
    strip = [[{k: v for k, v in h.items() if not k.endswith(("seconds", "tokens_per_s"))} for h in run] for run in history]
    assert strip[0] == strip[1]
    assert whole["CLLM4Rec"] == {**resumed["CLLM4Rec"], "seconds": whole["CLLM4Rec"]["seconds"]}
    # warmup_mr on: each content row is seen once per epoch, so the MR term shows from the second epoch
    assert next(h for h in history[0] if h["unit"] == "warmup-r000-e001")["content_mr_loss"] > 0


def test_row_adam_steps_each_row_along_its_gradient():
    """Per-coordinate Adam steps by ~lr·sign(g); row-wise Adam keeps the gradient's direction in each row
    and its size set by the row's RMS gradient (hand-computed first steps)."""
    from cllm4rec.row_adam import RowAdam

    grad = torch.tensor([[3.0, 0.3, -0.03], [0.0, 0.0, 0.0]])
    row = torch.zeros(2, 3, requires_grad=True)
    plain = torch.zeros(2, 3, requires_grad=True)
    opt, adam = RowAdam([row], lr=0.1, eps=1e-12), torch.optim.Adam([plain], lr=0.1, eps=1e-12)
    for _ in range(2):
        row.grad, plain.grad = grad.clone(), grad.clone()
        opt.step()
        adam.step()
    rms = float(grad[0].pow(2).mean().sqrt())
    assert row[0].detach() == pytest.approx((-0.2 * grad[0] / rms).tolist(), rel=1e-5)  # bias-corrected: 2 steps of lr·g/rms
    assert plain[0].detach() == pytest.approx([-0.2, -0.2, 0.2], rel=1e-5)  # Adam: signs only
    assert torch.equal(row[1].detach(), torch.zeros(3))  # a row without gradient does not move
    assert opt.state[row]["exp_avg_sq_row"].shape == (2, 1)


def test_row_adam_is_refused_under_deepspeed(planted_dataset, tiny_llama, tmp_path):
    from trainer.build import build_run
    from trainer.distributed import LOCAL
    from trainer.engine_setup import build_engine

    config = load_config(None, tiny_overrides(planted_dataset, tiny_llama, tmp_path, **{"model.table_optimizer": "row_adam"}))
    parts = build_run(config)
    with pytest.raises(ConfigError, match="model.table_optimizer=row_adam works with the plain engine only"):
        build_engine(config, LOCAL, parts, torch.device("cpu"), (tmp_path / "ds.json", {}), step_plans(config, STEPS))


def test_target_count_normalises_the_multinomial_loss_per_target(tiny_llama):
    """lm_sum / target_count is the loss per multi-hot target item (comparable to the popularity
    entropy); for next-token tasks it is the per-token mean, the same as lm_sum / lm_count."""
    model, tok = make_model(tiny_llama)
    batch = collab_batch(tok)
    collab = model(Task.COLLAB_LM, **batch)
    assert float(collab["target_count"]) == float(collab["lm_count"]) == 5
    rec = model(Task.RECOMMEND, **batch, target_rows=torch.tensor([0, 0, 1]), target_items=torch.tensor([1, 8, 5]))
    assert float(rec["lm_count"]) == 2 and float(rec["target_count"]) == 3
