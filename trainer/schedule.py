"""What each kind of training step does to the optimizer: which table group it moves, at which
learning rate (with an optional warm-up + cosine schedule), and how strongly the MR and prior terms
pull (docs/method.md §7.4, §8.3, §9.3; the optimizer groups: docs/architecture.md, section 3).

Step kinds: "warmup" (content warm-up), "content" (C-step), "collab" (L-step), "rec" (finetuning),
"rec_content" (finetuning content epoch). A group's schedule runs over its steps in one stage
(pretrain or finetune): the content group's pretraining schedule spans the warm-up and the C-steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from trainer.config import TrainConfig

@dataclass(frozen=True)
class StepPlan:
    """One kind of step. lr: the group's base rate; total_steps: the length of the group's schedule in
    this stage (cosine decays to 0 at its end); mr_mean: λ_c and λ_l weigh the MEAN over the global
    batch's ID-token occurrences instead of their sum (the authors')."""

    group: str
    stage: str
    lr: float
    lambda_c: float
    lambda_l: float = 0.0
    mr_mean: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0

    def lr_at(self, step: int) -> float:
        """The lr of the group's `step`-th update (0-based) in this stage: linear warm-up over
        `warmup_steps`, then constant or a half cosine from lr to 0 over the rest of `total_steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine" and self.total_steps > self.warmup_steps:
            progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def weights(self, id_occurrences: float) -> tuple[float, float]:
        """(MR weight, prior weight) that multiply the batch's sums of squared distances and norms."""
        scale = 1.0 / max(id_occurrences, 1.0) if self.mr_mean else 1.0
        return self.lambda_c * scale, self.lambda_l * scale


def constant_plans(pretrain_lr: float, finetune_lr: float, lambda_c: float, lambda_l: float = 0.0) -> dict[str, StepPlan]:
    """Every step kind at a constant rate with the authors' summed MR (λ_c in every phase, also the warm-up)."""
    return {
        "warmup": StepPlan("content", "pretrain", pretrain_lr, lambda_c),
        "content": StepPlan("content", "pretrain", pretrain_lr, lambda_c),
        "collab": StepPlan("collab", "pretrain", pretrain_lr, lambda_c, lambda_l),
        "rec": StepPlan("collab", "finetune", finetune_lr, lambda_c, lambda_l),
        "rec_content": StepPlan("content", "finetune", finetune_lr, lambda_c),
    }


def step_plans(config: TrainConfig, steps_per_epoch: Mapping[str, int]) -> dict[str, StepPlan]:
    """The plans of a run. steps_per_epoch: optimizer steps in one epoch of each task ("collab",
    "content", "rec"), already capped by `max_steps_per_epoch`; they size the cosine schedules."""
    pre, fine = config.pretrain, config.finetune
    mean = pre.mr_reduction == "mean"
    fine_lambda = pre.lambda_c if fine.lambda_c is None else fine.lambda_c
    content_epochs = pre.warmup_epochs + pre.rounds if pre.content else 0
    fine_content = fine.epochs if fine.content_epoch and pre.content else 0
    pretrain = dict(mr_mean=mean, schedule=pre.lr_schedule, warmup_steps=pre.lr_warmup_steps)
    finetune = dict(mr_mean=mean, schedule=fine.lr_schedule, warmup_steps=fine.lr_warmup_steps)
    content_lr = pre.lr if pre.content_lr is None else pre.content_lr
    content_total = content_epochs * steps_per_epoch["content"]
    return {
        "warmup": StepPlan("content", "pretrain", content_lr, pre.lambda_c if pre.warmup_mr else 0.0,
                           total_steps=content_total, **pretrain),
        "content": StepPlan("content", "pretrain", content_lr, pre.lambda_c, total_steps=content_total, **pretrain),
        "collab": StepPlan("collab", "pretrain", pre.lr, pre.lambda_c, pre.lambda_l,
                           total_steps=pre.rounds * steps_per_epoch["collab"], **pretrain),
        "rec": StepPlan("collab", "finetune", fine.lr, fine_lambda, pre.lambda_l,
                        total_steps=fine.epochs * steps_per_epoch["rec"], **finetune),
        "rec_content": StepPlan("content", "finetune", fine.lr if fine.content_lr is None else fine.content_lr, fine_lambda,
                                total_steps=fine_content * steps_per_epoch["content"], **finetune),
    }
