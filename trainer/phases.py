"""The trainer's vocabulary and its one table (docs/architecture.md, "Glossary" and section 4): the
phases of a run, the kinds of optimizer step, and for each kind the task its forward computes, the
table set it trains and its optimizer stage. A run is a list of epoch units (`training_units`), each
one epoch of one phase; a unit runs the step kinds of its phase (`Unit.steps`), one epoch each."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cllm4rec.tasks import Name, TableSet, Task
from trainer.config import TrainConfig


class Phase(Name):
    """A part of the schedule; the value opens the tags of its units (checkpoint names, the history)."""

    WARMUP = "warmup"  # content warm-up: the content LLM alone, before the first round
    L_STEP = "lstep"  # one round's L-step epoch: the collaborative LLM
    C_STEP = "cstep"  # one round's C-step epoch: the content LLM
    FINETUNE = "finetune"  # one masked-prompt finetuning epoch (and its content epoch), then validation


class Stage(Name):
    """An optimizer parameter group's stage: a group entering a new stage starts with fresh Adam state
    and a fresh lr schedule, at that stage's rate (the value is stored with the optimizer's groups)."""

    PRETRAIN = "pretrain"
    FINETUNE = "finetune"


class StepKind(Enum):
    """A kind of optimizer step. The one table of what each kind does: its label, the task its forward
    computes, the table set (= optimizer group) it trains, and its stage. The `backbone` group, when
    something in the backbone trains, moves in every kind. How far and how fast (lr, its schedule, the
    MR and prior weights) is the kind's `StepPlan` (trainer/schedule.py)."""

    # (label, task, trains, stage)
    WARMUP = ("warmup", Task.CONTENT_LM, TableSet.CONTENT, Stage.PRETRAIN)
    C_STEP = ("content", Task.CONTENT_LM, TableSet.CONTENT, Stage.PRETRAIN)
    L_STEP = ("collab", Task.COLLAB_LM, TableSet.COLLAB, Stage.PRETRAIN)
    FINETUNE = ("rec", Task.RECOMMEND, TableSet.COLLAB, Stage.FINETUNE)
    FINETUNE_CONTENT = ("rec_content", Task.CONTENT_LM, TableSet.CONTENT, Stage.FINETUNE)

    def __init__(self, label: str, task: Task, trains: TableSet, stage: Stage):
        self.label, self.task, self.trains, self.stage = label, task, trains, stage


# The epochs of each phase's units, in order. FINETUNE_CONTENT runs only with finetune.content_epoch
# and pretrain.content (`Unit.steps`).
PHASE_STEPS: dict[Phase, tuple[StepKind, ...]] = {
    Phase.WARMUP: (StepKind.WARMUP,),
    Phase.L_STEP: (StepKind.L_STEP,),
    Phase.C_STEP: (StepKind.C_STEP,),
    Phase.FINETUNE: (StepKind.FINETUNE, StepKind.FINETUNE_CONTENT),
}


@dataclass(frozen=True)
class Unit:
    """One epoch of one phase (round: the L/C round, 0 for the warm-up and finetuning)."""

    phase: Phase
    round: int
    epoch: int

    @property
    def tracking_run(self) -> str:
        """The MLflow phase run this unit logs to (nested under the training's parent run)."""
        if self.phase in (Phase.L_STEP, Phase.C_STEP):
            return f"round-{self.round + 1:03d}-{'L' if self.phase is Phase.L_STEP else 'C'}-step"
        return "content-warmup" if self.phase is Phase.WARMUP else "finetune"

    @property
    def tag(self) -> str:
        """E.g. 'lstep-r001-e000': names the unit's checkpoints and its history entry."""
        return f"{self.phase.value}-r{self.round:03d}-e{self.epoch:03d}"

    def steps(self, config: TrainConfig) -> list[StepKind]:
        """The step kinds of this unit's epochs (its parts), in order."""
        content_epoch = config.finetune.content_epoch and config.pretrain.content
        return [step for step in PHASE_STEPS[self.phase] if step is not StepKind.FINETUNE_CONTENT or content_epoch]


def training_units(config: TrainConfig) -> list[Unit]:
    """The run's schedule: warm-up epochs, (L-step, C-step) rounds, finetuning epochs (section 4)."""
    pre, fine = config.pretrain, config.finetune
    units = [Unit(Phase.WARMUP, 0, e) for e in range(pre.warmup_epochs)] if pre.content else []
    for r in range(pre.rounds):
        units.append(Unit(Phase.L_STEP, r, 0))
        if pre.content:
            units.append(Unit(Phase.C_STEP, r, 0))
    if fine.enabled:
        units += [Unit(Phase.FINETUNE, 0, e) for e in range(fine.epochs)]
    return units
