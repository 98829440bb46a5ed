"""Training curves of one run as a PNG: LM and MR losses per epoch unit across the phases, and the
validation metrics per finetuning epoch (from the run's history, `results.json` "history"). The LM
panel draws the popularity entropy of the training items (dashed) as the collaborative LM's
reference: the loss of a model that learned item popularity only."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cllm4rec.tasks import Task
from trainer.phases import Phase
from trainer.results import save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# the tasks whose losses the history holds, each under its prefix (`collab_lm_loss`), with its label
TASK_LABELS = {Task.COLLAB_LM: "collaborative LM", Task.CONTENT_LM: "content LM", Task.RECOMMEND: "finetuning (multinomial)"}
PHASE_LABELS = {Phase.WARMUP.value: "content warm-up", Phase.L_STEP.value: "L-step", Phase.C_STEP.value: "C-step",
                Phase.FINETUNE.value: "finetuning"}  # by the phase that opens a unit's tag


def phase_of(unit: str) -> str:
    """'lstep-r001-e000' → 'lstep'."""
    return unit.split("-", 1)[0]


def validation_metrics(history: Sequence[dict[str, Any]]) -> list[str]:
    """The ranking metrics among the history's validation keys (not counts such as val_n_users_evaluated)."""
    return sorted({k for entry in history for k in entry if k.startswith(("val_recall@", "val_ndcg@"))})


def popularity_reference(history: Sequence[dict[str, Any]]) -> float | None:
    """The popularity entropy the L-step units of `history` carry (`collab_popularity_entropy`), if any."""
    return next((entry["collab_popularity_entropy"] for entry in history if "collab_popularity_entropy" in entry), None)


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write the curves of `history` (one dict per epoch unit: "unit" plus metrics) to `path` (PNG,
    atomically); returns `path`. Raises ValueError on an empty history."""
    return save_png(training_figure(history, title), path)


def training_figure(history: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """The matplotlib Figure of `plot_training_curves`: panels LM losses, MR terms, validation."""
    if not history:
        raise ValueError("no epoch units in the history: nothing to plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import figure as mpl_figure

    figure = mpl_figure.Figure(figsize=(13, 4.2), layout="constrained")
    lm_axes, mr_axes, val_axes = figure.subplots(1, 3)
    units = [entry["unit"] for entry in history]
    entropy = popularity_reference(history)
    for axes, kind, ylabel in ((lm_axes, "lm_loss", "LM loss (mean per token / user)"), (mr_axes, "mr_loss", "MR term")):
        for task, label in TASK_LABELS.items():
            points = [(x, entry[f"{task.value}_{kind}"]) for x, entry in enumerate(history) if f"{task.value}_{kind}" in entry]
            if points:
                xs, ys = zip(*points)
                (curve,) = axes.plot(xs, ys, marker="o", markersize=3, label=label)
                if task is Task.COLLAB_LM and kind == "lm_loss" and entropy is not None:
                    axes.axhline(entropy, color=curve.get_color(), linestyle="--", linewidth=1,
                                 label="popularity entropy (collaborative LM)")
        _mark_phases(axes, units)
        axes.set_xlabel("epoch unit")
        axes.set_ylabel(ylabel)
        plotted = [y for line in axes.get_lines() for y in line.get_ydata()]
        if plotted:
            if all(y > 0 for y in plotted):  # log only where every value can be drawn (MR starts at 0)
                axes.set_yscale("log")
            axes.legend(fontsize=8)
    finetune = [entry for entry in history if phase_of(entry["unit"]) == Phase.FINETUNE.value]
    metrics = validation_metrics(finetune)
    for key in metrics:
        val_axes.plot(range(1, len(finetune) + 1), [entry.get(key, float("nan")) for entry in finetune],
                      marker="o", markersize=3, label=key.removeprefix("val_"))
    val_axes.set_xlabel("finetuning epoch")
    val_axes.set_ylabel("validation metric")
    if metrics:
        val_axes.legend(fontsize=8)
    else:
        val_axes.text(0.5, 0.5, "no finetuning epochs", ha="center", va="center", transform=val_axes.transAxes)
    lm_axes.set_title("language-model losses")
    mr_axes.set_title("mutual regularisation")
    val_axes.set_title("validation")
    if title:
        figure.suptitle(title)
    return figure


def _mark_phases(axes, units: list[str]) -> None:
    """Dotted lines where the phase changes, each labelled with the phase that starts there."""
    previous = None
    for x, unit in enumerate(units):
        phase = phase_of(unit)
        if phase != previous:
            axes.axvline(x - 0.5, color="0.7", linestyle=":", linewidth=1)
            axes.text(x - 0.4, 1.0, PHASE_LABELS.get(phase, phase), rotation=90, va="top", fontsize=7,
                      color="0.4", transform=axes.get_xaxis_transform())
            previous = phase
