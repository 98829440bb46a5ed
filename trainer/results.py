"""The results table: models side by side on the same split (Markdown and JSON)."""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.atomic import atomic_write_text


def metric_columns(recall_ks: list[int], ndcg_ks: list[int]) -> list[str]:
    return [f"recall@{k}" for k in recall_ks] + [f"ndcg@{k}" for k in ndcg_ks]


def markdown_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """`| Model | Recall@20 | ... |` with one row per model, values to 4 decimals."""
    header = "| Model | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in columns) + " |"
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
