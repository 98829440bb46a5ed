"""Training-curve PNGs: drawn from a run's history, written atomically, refused when empty."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from trainer.curves import plot_training_curves, training_figure, validation_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def history() -> list[dict]:
    units = [{"unit": "warmup-r000-e000", "content_lm_loss": 5.2, "content_mr_loss": 0.0}]
    for r in range(2):
        units.append({"unit": f"lstep-r{r:03d}-e000", "collab_lm_loss": 3.4 - r, "collab_mr_loss": 0.6,
                      "collab_popularity_entropy": 3.1})
        units.append({"unit": f"cstep-r{r:03d}-e000", "content_lm_loss": 5.0 - r / 10, "content_mr_loss": 0.1})
    for e in range(3):
        units.append({"unit": f"finetune-r000-e{e:03d}", "rec_lm_loss": 20.0 - e, "rec_mr_loss": 1.0 + e,
                      "val_recall@20": 0.5 + e / 10, "val_ndcg@100": 0.3 + e / 20, "val_selection": 1.0,
                      "val_n_users_evaluated": 80.0})
    return units


def test_curves_png_from_a_history(tmp_path):
    path = plot_training_curves(history(), tmp_path / "sub" / "curves.png", title="run")
    width, height = png_size(path)
    assert (width, height) == (1430, 462)  # 13 x 4.2 inches at 110 dpi
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temp file left behind


def test_curves_without_finetuning_and_empty_history(tmp_path):
    prerec = [u for u in history() if not u["unit"].startswith("finetune")]
    assert png_size(plot_training_curves(prerec, tmp_path / "prerec.png"))[0] > 0
    with pytest.raises(ValueError, match="no epoch units"):
        plot_training_curves([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_lm_panel_draws_the_popularity_entropy_dashed():
    lm_axes = training_figure(history()).axes[0]
    (collab,) = [line for line in lm_axes.get_lines() if line.get_label() == "collaborative LM"]
    (reference,) = [line for line in lm_axes.get_lines() if line.get_linestyle() == "--"]
    assert list(reference.get_ydata()) == [3.1, 3.1] and reference.get_color() == collab.get_color()
    assert "popularity entropy" in reference.get_label()
    without = [{k: v for k, v in u.items() if k != "collab_popularity_entropy"} for u in history()]
    assert not [line for line in training_figure(without).axes[0].get_lines() if line.get_linestyle() == "--"]


def test_validation_panel_plots_ranking_metrics_only():
    # a count such as n_users_evaluated (hundreds) on the same axis would flatten the metric curves
    assert validation_metrics(history()) == ["val_ndcg@100", "val_recall@20"]


def test_validation_against_compute_plot(tmp_path: Path):
    """scripts/val_vs_compute.py: each finetuning epoch's validation metric at the training minutes
    spent up to its end (earlier phases included); a run folder without results.json is named."""
    import json

    from conftest import load_script

    script = load_script("val_vs_compute")
    run = tmp_path / "run"
    run.mkdir()
    units = [{**unit, "epoch_seconds": 60.0, "rec_tokens": 2e5, "content_tokens": 1e5} for unit in history()]
    (run / "results.json").write_text(json.dumps({"history": units}))
    minutes, values = script.curve(run, "recall@20", "minutes")
    assert minutes == [6.0, 7.0, 8.0] and values == pytest.approx([0.5, 0.6, 0.7])
    assert script.curve(run, "recall@20")[0] == pytest.approx([1.8, 2.1, 2.4])  # millions of tokens of every task
    out = tmp_path / "val.png"
    assert script.main([str(run), "--out", str(out), "--reference", "MostPop=0.2", "--label", "run=a run"]) == 0
    assert png_size(out)[0] > 0
    with pytest.raises(SystemExit, match="results.json: not found"):
        script.curve(tmp_path / "missing", "recall@20")
