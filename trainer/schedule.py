"""How each kind of training step moves its table group: the learning rate (with an optional
warm-up + cosine schedule) and how strongly the MR and prior terms pull (docs/method.md §7.4, §8.3,
§9.3; the optimizer groups: docs/architecture.md, section 3). What each kind trains, and in which stage, is its row of `trainer.phases.StepKind`.

A group's lr schedule runs over its steps in one stage (pretrain or finetune): the content group's
pretraining schedule spans the warm-up and the C-steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from cllm4rec.tasks import TableSet
from trainer.config import TrainConfig
from trainer.phases import Stage, StepKind

# the step kinds whose epoch lengths size the lr schedules (the keys of `step_plans`' steps_per_epoch)
PLANNED_STEPS = (StepKind.L_STEP, StepKind.C_STEP, StepKind.FINETUNE)

@dataclass(frozen=True)
class StepPlan:
    """The numbers of one step kind. lr: the group's base rate; total_steps: the length of the group's
    schedule in this stage (cosine decays to 0 at its end); mr_mean: λ_c and λ_l weigh the MEAN over
    the global batch's ID-token occurrences instead of their sum (the authors')."""

    lr: float
    lambda_c: float
    lambda_l: float = 0.0
    mr_mean: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0

    def lr_at(self, step: int) -> float:
        """The lr of the group's `step`-th update (0-based) in this stage: linear warm-up over
        `warmup_steps`, then constant or a half cosine from lr to 0 over the rest of `total_steps`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine" and self.total_steps > self.warmup_steps:
            progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def weights(self, id_occurrences: float) -> tuple[float, float]:
        """(MR weight, prior weight) that multiply the batch's sums of squared distances and norms."""
        scale = 1.0 / max(id_occurrences, 1.0) if self.mr_mean else 1.0
        return self.lambda_c * scale, self.lambda_l * scale


def constant_plans(pretrain_lr: float, finetune_lr: float, lambda_c: float, lambda_l: float = 0.0
                   ) -> dict[StepKind, StepPlan]:
    """Every step kind at its stage's constant rate with the authors' summed MR (λ_c in every phase, also
    the warm-up; λ_l where the collaborative tables train)."""
    return {step: StepPlan(pretrain_lr if step.stage is Stage.PRETRAIN else finetune_lr, lambda_c,
                           lambda_l if step.trains is TableSet.COLLAB else 0.0) for step in StepKind}


def step_plans(config: TrainConfig, steps_per_epoch: Mapping[StepKind, int]) -> dict[StepKind, StepPlan]:
    """The plans of a run. steps_per_epoch: optimizer steps in one epoch of the L-step, the C-step and
    finetuning, already capped by `max_steps_per_epoch`; they size the cosine schedules (the finetuning
    content epoch's is taken as the C-step's)."""
    pre, fine = config.pretrain, config.finetune
    mean = pre.mr_reduction == "mean"
    fine_lambda = pre.lambda_c if fine.lambda_c is None else fine.lambda_c
    content_epochs = pre.warmup_epochs + pre.rounds if pre.content else 0
    fine_content = fine.epochs if fine.content_epoch and pre.content else 0
    pretrain = dict(mr_mean=mean, lr_schedule=pre.lr_schedule, warmup_steps=pre.lr_warmup_steps)
    finetune = dict(mr_mean=mean, lr_schedule=fine.lr_schedule, warmup_steps=fine.lr_warmup_steps)
    content_lr = pre.lr if pre.content_lr is None else pre.content_lr
    content_total = content_epochs * steps_per_epoch[StepKind.C_STEP]
    return {
        StepKind.WARMUP: StepPlan(content_lr, pre.lambda_c if pre.warmup_mr else 0.0, total_steps=content_total,
                                  **pretrain),
        StepKind.C_STEP: StepPlan(content_lr, pre.lambda_c, total_steps=content_total, **pretrain),
        StepKind.L_STEP: StepPlan(pre.lr, pre.lambda_c, pre.lambda_l,
                                  total_steps=pre.rounds * steps_per_epoch[StepKind.L_STEP], **pretrain),
        StepKind.FINETUNE: StepPlan(fine.lr, fine_lambda, pre.lambda_l,
                                    total_steps=fine.epochs * steps_per_epoch[StepKind.FINETUNE], **finetune),
        StepKind.FINETUNE_CONTENT: StepPlan(fine.lr if fine.content_lr is None else fine.content_lr, fine_lambda,
                                            total_steps=fine_content * steps_per_epoch[StepKind.C_STEP], **finetune),
    }
