"""Per-rank peak resident memory while the model is built for a distributed engine, with each table layout
of `trainer.build.build_model`: into ZeRO-3 partitions (`partitions`: the ZeRO-3 engine with
`distributed.partitioned_build: true`, trainer/zero_build.py), as each rank's rows (`rows`: the row-sharded
engine, `distributed.table_sharding: rows`), or whole on every rank (`whole`); on CPU ranks (gloo), fp32
(`zero3_cpu`).

    .venv/bin/python benchmarks/build_rss.py --backbone MODEL_FOLDER --users 800000 --items 800000 --ranks 2

Each build runs under the DeepSpeed launcher in worker mode: every rank imports everything, resets its
peak RSS (Linux: `/proc/self/clear_refs` ← 5) after importing the backbone's modules and tokenizer,
builds the backbone (from the folder's safetensors files,
sharded or not) and the model with the given table shapes (no dataset, no engine), and reports the growth
of its peak RSS (VmHWM) over its RSS before the build, and of its file-backed part (RssFile: pages of
mapped files, such as the code of shared libraries first run during the build) between the same two
moments; rank 0 writes them with the table and backbone bytes (tables: 4 × fp32 elements; backbone: its
safetensors files).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = ("whole", "partitions", "rows")


def status_mib(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def worker(args: argparse.Namespace) -> None:
    """Runs on every rank under the launcher; rank 0 writes every rank's figures to args.out."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    importlib.import_module("deepspeed")  # everything the build imports, imported before the baseline
    AutoTokenizer.from_pretrained(args.backbone)
    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(args.backbone))]

    from cllm4rec.row_shards import RowSlices
    from trainer.build import build_model
    from trainer.config_loading import load_config
    from trainer.deepspeed_engine import fill_ds_config, resolve_ds_config
    from trainer.distributed import init_distributed

    dist = init_distributed("cpu", require_group=True)
    cpu = torch.device("cpu")
    config = load_config("quick", [f"model.backbone={args.backbone}", "model.dtype=float32", "model.init_std=0.02"])
    ds_config = fill_ds_config(resolve_ds_config("zero3_cpu", cpu), 4, dist.world_size)
    dist.barrier()
    layout = {"whole": None, "partitions": ds_config, "rows": RowSlices(dist.rank, dist.world_size)}[args.layout]
    Path("/proc/self/clear_refs").write_text("5")
    before, file_before = status_mib("VmRSS"), status_mib("RssFile")
    model, _, _ = build_model(config, args.users, args.items, cpu, torch.float32, layout)
    figures = {"rank": dist.rank, "growth_mib": status_mib("VmHWM") - before,
               "file_growth_mib": status_mib("RssFile") - file_before,
               "table_mib": (2 * args.users + 2 * args.items) * model.dim * 4 / 2**20,
               "backbone_mib": sum(f.stat().st_size for f in Path(args.backbone).glob("*.safetensors")) / 2**20}
    ranks = dist.all_gather(figures)
    if dist.is_main:
        Path(args.out).write_text(json.dumps({"ranks": ranks, "layout": args.layout}, indent=2))
    end_worker()


def end_worker() -> NoReturn:
    """A worker's last step once its figures are written: leave the process group, then exit without the
    interpreter's finalisation. A gloo worker thread still dropping the last collective needs the GIL to
    release its Python tensors; if finalisation has begun by then the thread is stopped mid-destructor and
    the process aborts ("terminate called without an active exception": about one exit in six after a
    ZeRO-3 partitioned build, one in thirty with a barrier first)."""
    from trainer.distributed import shutdown_distributed

    shutdown_distributed(wait_for_peers=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_on_cpu_ranks(args: list[str], ranks: int, log: Path, timeout: float) -> None:
    """Run `args` (a script and its flags) under the DeepSpeed launcher on `ranks` CPU ranks, one OpenMP
    thread each, its output to `log`; RuntimeError with the log's tail when it fails or runs past `timeout`
    seconds (then the launcher's whole process group, ranks included, is killed)."""
    from trainer.distributed import single_node_launch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    with log.open("w") as sink:
        proc = subprocess.Popen(single_node_launch(args, ranks), cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"killed after {timeout:.0f} s"
    if status != 0:
        raise RuntimeError(f"{Path(args[0]).name} worker failed ({status}):\n{log.read_text()[-4000:]}")


def launch(backbone: Path, users: int, items: int, ranks: int, layout: str, out: Path, timeout: float = 600) -> dict:
    """Run the worker on `ranks` CPU ranks (one OpenMP thread each) with table layout `layout` (`LAYOUTS`) and
    return what rank 0 wrote to `out`."""
    args = [__file__, "--worker", "--users", str(users), "--items", str(items), "--backbone", str(backbone),
            "--out", str(out), "--layout", layout]
    run_on_cpu_ranks(args, ranks, out.with_suffix(".log"), timeout)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="a Hugging Face model folder (safetensors)")
    parser.add_argument("--users", type=int, default=800_000)
    parser.add_argument("--items", type=int, default=800_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print("| build | rank | peak RSS growth (MiB) | RssFile growth (MiB) | tables (MiB) | backbone (MiB) "
          "| growth / (tables + backbone) |")
    print("|---|---|---|---|---|---|---|")
    for layout in LAYOUTS:
        out = Path(f"/tmp/build_rss-{layout}-{os.getpid()}.json")
        for r in launch(Path(args.backbone), args.users, args.items, args.ranks, layout, out)["ranks"]:
            total = r["table_mib"] + r["backbone_mib"]
            print(f"| {layout} | {r['rank']} | {r['growth_mib']:.1f} | {r['file_growth_mib']:.1f} | {r['table_mib']:.1f} "
                  f"| {r['backbone_mib']:.2f} | {r['growth_mib'] / total:.3f} |")


if __name__ == "__main__":
    main()
