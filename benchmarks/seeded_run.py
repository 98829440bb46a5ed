"""Fingerprints of seeded tiny runs: is training bit-identical before and after a change to the code?

    .venv/bin/python benchmarks/seeded_run.py --out before.json --keep-short /tmp/short   # on the old code
    .venv/bin/python benchmarks/seeded_run.py --out after.json --resume /tmp/short        # on the new code
    .venv/bin/python benchmarks/seeded_run.py --compare before.json after.json

"The old code": a checkout of the commit before the change (e.g. `git archive REV | tar -x -C /tmp/old`)
with this file copied into its benchmarks/, run from there.

Each variant trains the quick recipe on ML-100K with the tiny backbone (benchmarks/common.py), a few
capped steps per epoch, in its own process with one thread (deterministic reductions), through
`python -m trainer`: the plain engine in bf16 (`auto` on a CPU with bf16) and in fp32 with most
options switched on (cosine lr, warm-up steps, summed MR, the prior, row-wise Adam, content rows from
text, collaborative rows from the warm-up), LoRA (the backbone group), LLM-PreRec (the interaction
prompt), and DeepSpeed ZeRO-3 on one rank. A run's fingerprint: every per-step loss MLflow received,
the per-epoch history and test metrics (timings left out), the sha256 of every tensor of every
checkpoint, of best/ and model/ (tables, the plain optimizer's state, trained backbone weights), the
optimizer's parameter groups, and a fold-in of new users and items into the bf16 model.

`--keep-short DIR` also trains the bf16 and DeepSpeed variants with one finetuning epoch fewer into
DIR; `--resume DIR` continues copies of those runs (`--resume` with the full epochs): a checkpoint the
old code wrote must resume under the new code to the very same fingerprint. `--compare` names every
difference and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import REPO, tiny_backbone

SETTINGS = {"pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "pretrain.max_steps_per_epoch": 3,
            "finetune.epochs": 2, "finetune.content_epoch": True, "finetune.max_steps_per_epoch": 3,
            "eval.max_users": 48, "baselines.multivae": False, "baselines.ease": False,
            "checkpoint.every_steps": 2, "checkpoint.keep": 1000, "tracking.log_every_steps": 1}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain-bf16": {},
    "plain-fp32-options": {"model.dtype": "float32", "pretrain.rounds": 2, "pretrain.mr_reduction": "sum",
                           "pretrain.lambda_c": 0.01, "pretrain.lambda_l": 0.001, "pretrain.lr_schedule": "cosine",
                           "pretrain.lr_warmup_steps": 1, "finetune.lr_schedule": "cosine", "pretrain.warmup_mr": True,
                           "pretrain.collab_from_content": True, "model.table_optimizer": "row_adam",
                           "model.content_init_from_text": True, "model.content_init_reviews": True},
    "plain-lora": {"model.dtype": "float32", "ablation": "ftall-lora", "model.lora_target_modules": "[q_proj, v_proj]"},
    "plain-prerec": {"model.dtype": "float32", "ablation": "prerec", "pretrain.rounds": 2},
    "deepspeed": {"distributed.engine": "deepspeed", "pretrain.rounds": 2, "pretrain.mr_reduction": "sum",
                  "pretrain.lambda_c": 0.01, "pretrain.lr_schedule": "cosine", "pretrain.collab_from_content": True},
}
# trained short by --keep-short, continued by --resume: their finetuning lr is constant (a cosine schedule's
# length is finetune.epochs, so a run extended on resume follows another schedule than one trained whole)
RESUMED = ("plain-bf16", "deepspeed")
TIMINGS = ("seconds", "tokens_per_s")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "LOCAL_WORLD_SIZE", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cli(args: list[str], log: Path, module: str = "trainer") -> None:
    with log.open("w") as sink:
        done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(), stdout=sink,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:3])}… failed; the end of {log}:\n{log.read_text()[-3000:]}")


def overrides(variant: str, out: Path, backbone: Path, finetune_epochs: int | None = None) -> list[str]:
    values = {**SETTINGS, **VARIANTS[variant], "model.backbone": str(backbone), "output_dir": str(out),
              "tracking.tracking_uri": f"sqlite:///{out / 'mlflow.db'}"}
    if finetune_epochs is not None:
        values["finetune.epochs"] = finetune_epochs
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def train(variant: str, out: Path, backbone: Path, *, finetune_epochs: int | None = None, resume: bool = False) -> None:
    args = ["--no-progress", "--recipe", "quick", *(["--resume"] if resume else [])]
    _cli([*args, *overrides(variant, out, backbone, finetune_epochs)], out.parent / f"{out.name}.log")


def tensor_hashes(run: Path) -> dict[str, str]:
    """sha256 of each tensor's bytes (with its dtype and shape) in every safetensors file under `run`, but
    MLflow's copies (mlartifacts/<random run id>/: the model/ and pyfunc/ hashed here already)."""
    import torch
    from safetensors.torch import load_file

    hashes = {}
    for path in sorted(p for p in run.rglob("*.safetensors") if "mlartifacts" not in p.relative_to(run).parts):
        for name, tensor in sorted(load_file(str(path)).items()):
            raw = tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes()
            key = f"{path.relative_to(run)}::{name}"
            hashes[key] = f"{tensor.dtype} {list(tensor.shape)} {hashlib.sha256(raw).hexdigest()}"
    return hashes


def step_losses(db: Path) -> dict[str, list[float]]:
    """Every per-step metric MLflow received, by '<phase run>/<key>', in step order."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT r.name, m.key, m.step, m.value FROM metrics m JOIN runs r "
                                  "ON m.run_uuid = r.run_uuid WHERE m.key LIKE 'step_%' "
                                  "ORDER BY r.name, m.key, m.step").fetchall()
    out: dict[str, list[float]] = {}
    for run, key, _, value in rows:
        out.setdefault(f"{run}/{key}", []).append(value)
    return out


def without_timings(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.endswith(TIMINGS)}


def fingerprint(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    groups = {str(p.relative_to(run)): json.loads(p.read_text())["param_groups"]
              for p in sorted(run.rglob("optimizer-*.json"))}
    return {"history": [without_timings(h) for h in results["history"]],
            "models": {name: without_timings(row) for name, row in results["models"].items()},
            "best_epoch": results["best_epoch"], "tensors": tensor_hashes(run), "optimizer_groups": groups,
            "step_losses": step_losses(run / "mlflow.db")}


def fold_in_fingerprint(model: Path, folder: Path) -> dict[str, Any]:
    """`cllm4rec fold-in` of 20 new items and 10 new users (5 interactions each) into `model`."""
    from fold_in import new_tables

    items = new_tables(model, folder / "items", 20, 0, 5, seed=0)["items"]
    users = new_tables(model, folder / "users", 0, 10, 5, seed=0)
    out = folder / "model"
    _cli(["fold-in", "--model", str(model), "--out", str(out), "--no-pyfunc", "--no-progress", "--passes", "2",
          "--items", str(items.path), "--users", str(users["users"].path),
          "--interactions", str(users["interactions"].path)], folder / "fold-in.log", module="trainer.cli")
    report = json.loads((out / "fold_in.json").read_text())
    return {"losses": [report["content_loss"], report["collab_loss"]], "added": report["added"],
            "tensors": tensor_hashes(out)}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    prints: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="seeded-run-") as tmp:
        root = Path(tmp)
        home = args.keep_short or args.resume or root  # a resumed run needs the very backbone folder it started with
        home.mkdir(parents=True, exist_ok=True)
        backbone = tiny_backbone(home / "tiny")
        for variant in args.variants:
            train(variant, root / variant, backbone)
            prints[variant] = fingerprint(root / variant)
            print(f"{variant}: {len(prints[variant]['tensors'])} tensors, "
                  f"{sum(map(len, prints[variant]['step_losses'].values()))} step losses", flush=True)
        if "plain-bf16" in args.variants:
            prints["fold-in"] = fold_in_fingerprint(root / "plain-bf16" / "model", root / "fold-in")
        for variant in RESUMED if args.keep_short else ():
            train(variant, args.keep_short / variant, backbone, finetune_epochs=SETTINGS["finetune.epochs"] - 1)
        for variant in RESUMED if args.resume else ():
            copy = root / f"{variant}-resumed"
            shutil.copytree(args.resume / variant, copy)
            (copy / "mlflow.db").unlink()  # the resumed run opens its own parent run: count only its steps
            train(variant, copy, backbone, resume=True)
            resumed = fingerprint(copy)
            # a resumed run's MLflow holds only the steps after the checkpoint it resumed from
            prints[f"{variant}+resumed"] = {k: v for k, v in resumed.items() if k != "step_losses"}
            print(f"{variant} resumed from {args.resume / variant}", flush=True)
    return prints


def differences(before: dict[str, Any], after: dict[str, Any], path: str = "") -> list[str]:
    """Every path where the two fingerprints differ (exact comparison, floats included)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in sorted(set(before) | set(after), key=str)
                for line in (differences(before.get(key), after.get(key), f"{path}/{key}")
                             if key in before and key in after else [f"{path}/{key}: only in {'after' if key in after else 'before'}"])]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [line for index, (a, b) in enumerate(zip(before, after)) for line in differences(a, b, f"{path}[{index}]")]
    return [] if before == after else [f"{path}: {before!r} != {after!r}"]


def compare(before_path: Path, after_path: Path) -> int:
    before, after = json.loads(before_path.read_text()), json.loads(after_path.read_text())
    found, compared = [], []
    for name, print_after in after.items():
        reference = before.get(name.removesuffix("+resumed"))
        if reference is None:
            continue
        if name.endswith("+resumed"):
            reference = {k: v for k, v in reference.items() if k != "step_losses"}
        compared.append(f"{name} = {before_path.name}:{name.removesuffix('+resumed')}")
        found += [f"{name}{line}" for line in differences(reference, print_after)]
    print("\n".join(compared))
    for name, fp in after.items():
        print(f"  {name}: {len(fp.get('tensors', {}))} tensors, {len(fp.get('history', []))} epoch units, "
              f"{sum(map(len, fp.get('step_losses', {}).values()))} step losses")
    print("\n".join(found) if found else "identical: every loss, metric and tensor hash")
    return 1 if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--keep-short", type=Path, help="also train the resumable variants one finetuning epoch short here")
    parser.add_argument("--resume", type=Path, help="resume copies of the short runs of --keep-short DIR to the end")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files")
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if args.out is None:
        parser.error("--out or --compare is required")
    prints = run_all(args)
    args.out.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"fingerprints: {args.out}")


if __name__ == "__main__":
    main()
