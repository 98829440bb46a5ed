"""The results table: models side by side on the same split (Markdown and JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from data_prep.atomic import atomic_file, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_DPI = 110  # every plot the trainer writes


def column_title(column: str) -> str:
    """'recall@20' → 'Recall@20', 'ndcg@100' → 'NDCG@100' (table headers and plot titles)."""
    return column.replace("recall", "Recall").replace("ndcg", "NDCG")


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """`| Model | Recall@20 | ... |` with one row per model, values to 4 decimals."""
    header = "| Model | " + " | ".join(map(column_title, columns)) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for name, metrics in rows.items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "–" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: dict[str, dict[str, float]], columns: list[str], extra: dict) -> str:
    """Write results.md and results.json into out_dir (atomically); returns the Markdown table."""
    table = markdown_table(rows, columns)
    atomic_write_text(out_dir / "results.md", table)
    atomic_write_text(out_dir / "results.json", json.dumps({"models": rows, **extra}, indent=2, sort_keys=True) + "\n")
    return table


def save_png(figure: Figure, path: Path) -> Path:
    """Write `figure` to `path` as a PNG at PNG_DPI, whole or not at all; returns `path`."""
    with atomic_file(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=PNG_DPI)
    return Path(path)


def write_report(out: Path, stem: str, report: dict[str, Any], markdown: str, plot: Callable[[dict[str, Any], Path], Path],
                 tracker) -> None:
    """`<stem>.json`, `<stem>.md` and `<stem>.png` in `out` (each written atomically), then logged as
    artifacts of `tracker`'s run (a `trainer.tracking.Tracker`; a no-op when it is disabled)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / f"{stem}.md", markdown)
    plot(report, out / f"{stem}.png")
    for suffix in ("json", "md", "png"):
        tracker.log_artifact(out / f"{stem}.{suffix}")
