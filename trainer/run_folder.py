"""How a training run treats its output folder (docs/architecture.md, section 5, "Output folder"): a
new run refuses a folder that holds a run, `--resume` needs one, `--overwrite` removes it first."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

# How a run treats its output folder: "new" refuses one that holds a run, "resume" needs one,
# "resume-or-start" takes either, "overwrite" removes the run it holds first.
Start = Literal["new", "resume", "resume-or-start", "overwrite"]


def holds_run(out: Path) -> bool:
    """Whether the folder `out` holds a run: the config.yaml a run writes first, or its checkpoints."""
    return (out / "config.yaml").is_file() or (out / "checkpoints").is_dir()


def start_problem(out: Path, start: Start) -> str | None:
    """Why a run may not start in `out` as `start` asks (None: it may)."""
    if start == "new" and holds_run(out):
        return (f"{out}: holds a run already; continue it with --resume, replace it with --overwrite, "
                f"or train under a new name=")
    if start == "resume" and not holds_run(out):
        return f"{out}: no run to resume; train without --resume, or pass --resume-or-start"
    return None


def make_output_folder(out: Path, start: Start) -> None:
    """Create `out`, first removing the run it holds when `start` is "overwrite" (rank 0 only)."""
    if start == "overwrite" and holds_run(out):
        log.info("--overwrite: removing the run in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
