"""The memory plan of a run (trainer/memory_plan.py; what `cllm4rec plan-memory` prints and the preflight
checks) against the run itself: one training in this process, its resident memory once the model and engine
are built, its peak by the end of each epoch unit and of the run, each over the resident memory just before
the build (after the check), beside the plan's host totals at the build and its host peak. CPU runs: on a GPU
the device terms are not resident memory.

    PYTHONPATH=. .venv/bin/python benchmarks/memory_plan.py --recipe quick name=plan-check \\
        pretrain.max_steps_per_epoch=20 finetune.epochs=1 finetune.max_steps_per_epoch=20
"""
from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path
from typing import Any


def rss_bytes() -> int:
    """This process's resident memory now (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(recipe: str, overrides: list[str]) -> dict[str, Any]:
    """Train `recipe` with `overrides` (from scratch, replacing its output folder) and return the plan's host
    figures and the measured ones, in GiB."""
    from trainer import pipeline
    from trainer.config_loading import load_config
    from trainer.memory_plan import BUILD, GIB, HOST, render

    config = load_config(recipe or None, overrides)
    config.distributed.memory_check = True
    seen: dict[str, Any] = {}
    check = pipeline.check_memory

    def checked(*args: Any, **kwargs: Any):
        seen["plan"] = check(*args, **kwargs)
        seen["before_build"] = rss_bytes()
        return seen["plan"]

    pipeline.check_memory = checked
    run = pipeline.TrainingRun(config, progress=False, start="overwrite")
    built = rss_bytes()
    plan, base = seen["plan"], seen["before_build"]
    by_unit: dict[str, float] = {}
    run.on_unit = lambda tag, metrics: by_unit.__setitem__(tag, round((peak_rss_bytes() - base) / GIB, 4))
    run.run()
    peak = peak_rss_bytes()
    need, moment = plan.peak(HOST)
    print(render(plan, {}))
    return {"rss_before_build_gib": base / GIB,
            "plan_build_gib": plan.total(HOST, BUILD) / GIB, "measured_build_gib": (built - base) / GIB,
            "plan_peak_gib": need / GIB, "plan_peak_moment": moment, "measured_peak_by_unit_gib": by_unit,
            "measured_peak_gib": (peak - base) / GIB, "measured_over_plan": (peak - base) / need}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quick", help="shipped recipe or a YAML file (\"\": the defaults)")
    parser.add_argument("overrides", nargs="*", help="config overrides")
    args = parser.parse_args(argv)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                      for k, v in measure(args.recipe, args.overrides).items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
