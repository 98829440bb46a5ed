"""From raw files to a processed dataset folder: read, filter, split, write; and a readable summary."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from data_prep.errors import DataPrepError
from data_prep.processed import ProcessedDataset, build_processed, is_processed, write_processed
from data_prep.raw import RawDataset

log = logging.getLogger(__name__)

DEFAULT_KCORE = {"movielens": 0, "amazon": 5, "yelp": 5, "generic": 0}


def is_plain_name(name: str) -> bool:
    """Whether `name` is a dataset name that stays inside the cache (no separator, no leading '.' or '~'),
    as opposed to a path."""
    return bool(name) and not name.startswith((".", "~")) and "/" not in name and "\\" not in name


def check_name(name: str) -> str:
    """`name` if it is a plain folder name, one that stays inside the cache; else DataPrepError."""
    if not is_plain_name(name):
        raise DataPrepError(f"dataset name (--name) {name!r}: not a plain name (no '/', '\\' or leading '.'); "
                            f"give a path with --out instead")
    return name


def default_output(name: str, seed: int = 0) -> Path:
    """Where `cllm4rec prepare` puts a dataset by default: <cache>/datasets/<name>[-split<seed>]."""
    from data_prep.assets import cache_dir

    name = check_name(name)
    return cache_dir() / "datasets" / (name if seed == 0 else f"{name}-split{seed}")


def _within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def check_output(out: Path, inputs: list[Path], *, force: bool = False,
                 replaceable: Callable[[Path], bool] = is_processed, what: str = "a prepared dataset") -> Path:
    """`out`, resolved, if a prepared dataset (or `what`, told by `replaceable`) may replace it; else
    DataPrepError naming it.

    Never replaced: a folder holding an input being read or the current directory, or a file. A
    non-empty folder that is not `what` is replaced only with `force`.
    """
    target = Path(out).expanduser().resolve()
    held = [p for p in inputs if _within(Path(p).expanduser().resolve(), target)]
    if held:
        raise DataPrepError(f"{out}: holds the input {held[0]} being read; choose another output folder")
    if _within(Path.cwd().resolve(), target):
        raise DataPrepError(f"{out}: is (or holds) the current directory; choose another output folder")
    if target.exists() and not target.is_dir():
        raise DataPrepError(f"{out}: is a file, not a folder; choose another output folder")
    if target.is_dir() and not force and any(target.iterdir()) and not replaceable(target):
        raise DataPrepError(f"{out}: not empty and not {what}; refusing to replace it: choose "
                            f"another output folder, or pass --force")
    return target


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
