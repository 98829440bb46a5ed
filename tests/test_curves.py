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


def png_colour_share(path: Path) -> float:
    """Share of a PNG's pixels in colour (channels differing by more than 0.2): drawn curves and bars,
    not the white background or the grey and black axes and text. A blank or data-less figure gives 0."""
    from matplotlib.image import imread

    rgb = imread(path)[..., :3]
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2).mean())


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


def curves(axes) -> dict[str, list[float]]:
    """The data curves of one panel (marked points; not the phase or reference lines): label → y values."""
    return {line.get_label(): list(line.get_ydata()) for line in axes.get_lines() if line.get_marker() == "o"}


def test_curves_png_from_a_history(tmp_path):
    path = plot_training_curves(history(), tmp_path / "sub" / "curves.png", title="run")
    width, height = png_size(path)
    assert (width, height) == (1430, 462)  # 13 x 4.2 inches at 110 dpi
    assert png_colour_share(path) > 0.005  # curves drawn in colour, not a blank figure
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temp file left behind
    lm, mr, val = training_figure(history()).axes
    assert curves(lm) == {"collaborative LM": [3.4, 2.4], "content LM": [5.2, 5.0, 4.9],
                          "finetuning (multinomial)": [20.0, 19.0, 18.0]}
    assert curves(mr) == {"collaborative LM": [0.6, 0.6], "content LM": [0.0, 0.1, 0.1],
                          "finetuning (multinomial)": [1.0, 2.0, 3.0]}
    assert list(curves(val)) == ["ndcg@100", "recall@20"]
    assert curves(val)["ndcg@100"] == pytest.approx([0.3, 0.35, 0.4])
    assert curves(val)["recall@20"] == pytest.approx([0.5, 0.6, 0.7])
    # a dotted line where each of the 6 phase runs starts (warm-up, L, C, L, C, finetuning)
    assert sum(line.get_linestyle() == ":" for line in lm.get_lines()) == 6


def test_curves_without_finetuning_and_empty_history(tmp_path):
    prerec = [u for u in history() if not u["unit"].startswith("finetune")]
    path = plot_training_curves(prerec, tmp_path / "prerec.png")
    assert png_colour_share(path) > 0.002
    lm, _, val = training_figure(prerec).axes
    assert set(curves(lm)) == {"collaborative LM", "content LM"} and curves(val) == {}
    assert [text.get_text() for text in val.texts] == ["no finetuning epochs"]
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


def test_validation_against_compute_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
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
    drawn = []

    class Recorded(script.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            drawn.append(self)

    monkeypatch.setattr(script, "Figure", Recorded)
    assert script.main([str(run), "--out", str(out), "--reference", "MostPop=0.2", "--label", "run=a run"]) == 0
    assert png_size(out) == (770, 495) and png_colour_share(out) > 0.002  # 7 x 4.5 inches at 110 dpi
    (axes,) = drawn[0].axes
    (curve, reference) = axes.get_lines()
    assert curve.get_label() == "a run" and list(curve.get_xdata()) == pytest.approx([1.8, 2.1, 2.4])
    assert list(curve.get_ydata()) == pytest.approx([0.5, 0.6, 0.7]) and list(reference.get_ydata()) == [0.2, 0.2]
    with pytest.raises(SystemExit, match="results.json: not found"):
        script.curve(tmp_path / "missing", "recall@20")
