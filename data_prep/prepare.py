"""From raw files to a processed dataset folder: read, filter, split, write; and a readable summary."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from data_prep.processed import ProcessedDataset, build_processed, write_processed
from data_prep.raw import RawDataset

log = logging.getLogger(__name__)

DEFAULT_KCORE = {"movielens": 0, "amazon": 5, "yelp": 5, "generic": 0}


def default_output(name: str, seed: int = 0) -> Path:
    """Where `cllm4rec prepare` puts a dataset by default: <cache>/datasets/<name>[-split<seed>]."""
    from data_prep.assets import cache_dir

    return cache_dir() / "datasets" / (name if seed == 0 else f"{name}-split{seed}")


def prompt_templates() -> dict[str, str]:
    """The document templates (cllm4rec/templates.py), recorded in meta.json."""
    from cllm4rec.templates import TEMPLATES

    return dict(TEMPLATES)


def prepare(raw: RawDataset, out_dir: Path, *, kcore: int | None = None, seed: int = 0) -> ProcessedDataset:
    """Build and write the processed dataset of `raw` into `out_dir` (whole or not at all).

    kcore: None → the source's default (5 for Amazon/Yelp, 0 — none — for MovieLens and generic).
    """
    kcore = DEFAULT_KCORE.get(raw.source, 0) if kcore is None else kcore
    start = time.perf_counter()
    dataset = build_processed(raw, kcore=kcore, seed=seed)
    write_processed(dataset, out_dir, prompt_templates())
    log.info("wrote %s in %.1f s", out_dir, time.perf_counter() - start)
    return dataset


def summary(meta: dict[str, Any], path: Path | None = None) -> str:
    """A few human-readable lines describing a processed dataset's meta.json."""
    c, f = meta["counts"], meta["filters"]
    n = max(c["interactions"], 1)
    lines = [
        f"dataset {meta['name']} ({meta['source']})" + (f" at {path}" if path else ""),
        f"  users {c['users']:,}  items {c['items']:,}  interactions {c['interactions']:,}"
        f"  density {c['interactions'] / max(c['users'] * c['items'], 1):.4%}",
        f"  split (seed {meta['split']['seed']}): train {c['train']:,} ({c['train'] / n:.1%})"
        f"  val {c['val']:,} ({c['val'] / n:.1%})  test {c['test']:,} ({c['test'] / n:.1%})",
        f"  texts: {c['users_with_text']:,} user biographies, {c['items_with_text']:,} item texts,"
        f" {c['reviews']:,} training reviews",
        f"  filters: k-core {meta['kcore']} removed {f.get('kcore_removed_interactions', 0):,} interactions;"
        f" {f.get('duplicates_merged', 0):,} duplicates merged; {f.get('users_dropped_too_few', 0):,} users"
        f" with < 3 interactions dropped; {f.get('reviews_dropped_heldout', 0):,} held-out reviews dropped",
    ]
    if f.get("bad_lines_skipped") or f.get("bytes_replaced"):
        lines.append(
            f"  input repairs: {f.get('bad_lines_skipped', 0):,} bad lines skipped,"
            f" {f.get('bytes_replaced', 0):,} invalid UTF-8 bytes replaced"
        )
    return "\n".join(lines)
