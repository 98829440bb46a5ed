"""Training curves of one run as a PNG: LM and MR losses per epoch unit across the phases, and the
validation metrics per finetuning epoch (from the run's history, `results.json` "history")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from data_prep.atomic import atomic_file

LOSS_TASKS = ("collab", "content", "rec")
TASK_LABELS = {"collab": "collaborative LM", "content": "content LM", "rec": "finetuning (multinomial)"}
PHASE_LABELS = {"warmup": "content warm-up", "lstep": "L-step", "cstep": "C-step", "finetune": "finetuning"}


def phase_of(unit: str) -> str:
    """'lstep-r001-e000' → 'lstep'."""
    return unit.split("-", 1)[0]


def validation_metrics(history: Sequence[dict[str, Any]]) -> list[str]:
    """The ranking metrics among the history's validation keys (not counts such as val_n_users_evaluated)."""
    return sorted({k for entry in history for k in entry if k.startswith(("val_recall@", "val_ndcg@"))})


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write the curves of `history` (one dict per epoch unit: "unit" plus metrics) to `path` (PNG,
    atomically); returns `path`. Raises ValueError on an empty history."""
    if not history:
        raise ValueError("no epoch units in the history: nothing to plot")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2), layout="constrained")
    lm_axes, mr_axes, val_axes = figure.subplots(1, 3)
    units = [entry["unit"] for entry in history]
    for axes, kind, ylabel in ((lm_axes, "lm_loss", "LM loss (mean per token / user)"), (mr_axes, "mr_loss", "MR term")):
        for task in LOSS_TASKS:
            points = [(x, entry[f"{task}_{kind}"]) for x, entry in enumerate(history) if f"{task}_{kind}" in entry]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, marker="o", markersize=3, label=TASK_LABELS[task])
        _mark_phases(axes, units)
        axes.set_xlabel("epoch unit")
        axes.set_ylabel(ylabel)
        plotted = [y for line in axes.get_lines() for y in line.get_ydata()]
        if plotted:
            if all(y > 0 for y in plotted):  # log only where every value can be drawn (MR starts at 0)
                axes.set_yscale("log")
            axes.legend(fontsize=8)
    finetune = [entry for entry in history if phase_of(entry["unit"]) == "finetune"]
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
    with atomic_file(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return Path(path)


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
