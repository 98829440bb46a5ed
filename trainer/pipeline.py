"""The CLLM4Rec recipe: content warm-up → alternating L/C rounds → finetuning with validation-based
selection → test → results table beside MostPop, Multi-VAE and EASE (docs/method.md §8–§11).

Training is a list of epoch units; after each unit (and every `checkpoint.every_steps` steps inside
one) the tables, optimizer state and position are checkpointed, so `start="resume"` continues from the
last complete checkpoint in the same phase, epoch and step (documents of every epoch are seeded by
(seed, phase, round, epoch, task), docs/method.md §8.4, so a resumed run sees what an uninterrupted one would).

The same recipe runs in one process (plain engine) and under DeepSpeed ZeRO-3 on any number of
ranks: every rank runs every method here; only rank 0 writes files, logs to MLflow and prints.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

import torch
import yaml

from cllm4rec.interactions import popularity_entropy
from cllm4rec.metrics import selection_score
from data_prep.atomic import atomic_write_text
from trainer import checkpoint as ckpt
from trainer.baselines import run_baselines
from trainer.build import RunParts, build_run, pick_device, pick_dtype, resolve_dataset
from trainer.ablations import ABLATIONS
from trainer.config import RESUMABLE_KEYS, ConfigError, TrainConfig, config_to_dict, flatten
from trainer.curves import plot_training_curves
from trainer.data import Batch, epoch_rng, user_item_lists
from trainer.distributed import Dist, init_distributed
from trainer.engine import DeepSpeedEngine, Engine, PlainEngine, fill_ds_config, resolve_ds_config, want_deepspeed
from trainer.evaluate import evaluate, scoring_prompt
from trainer.incremental import warm_start
from trainer.loop import EpochProgress, run_epoch
from trainer.results import write_results
from trainer.schedule import StepPlan, step_plans
from trainer.serving import save_pyfunc
from trainer.tracking import PARENT_TAG, Tracker

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


@dataclass(frozen=True)
class Unit:
    """One epoch of one phase: phase ∈ warmup | lstep | cstep | finetune."""

    phase: str
    round: int
    epoch: int

    @property
    def group(self) -> str:
        """The MLflow phase run this unit logs to."""
        return {"warmup": "content-warmup", "finetune": "finetune"}.get(
            self.phase, f"round-{self.round + 1:03d}-{'L' if self.phase == 'lstep' else 'C'}-step"
        )

    @property
    def tag(self) -> str:
        return f"{self.phase}-r{self.round:03d}-e{self.epoch:03d}"


def schedule(config: TrainConfig) -> list[Unit]:
    pre, fine = config.pretrain, config.finetune
    units = [Unit("warmup", 0, e) for e in range(pre.warmup_epochs)] if pre.content else []
    for r in range(pre.rounds):
        units.append(Unit("lstep", r, 0))
        if pre.content:
            units.append(Unit("cstep", r, 0))
    if fine.enabled:
        units += [Unit("finetune", 0, e) for e in range(fine.epochs)]
    return units


def engine_kind(engine: Engine) -> str:
    """Names the optimizer-state layout: a checkpoint resumes only under the same engine and world size."""
    return f"deepspeed-zero3 x{engine.dist.world_size}" if isinstance(engine, DeepSpeedEngine) else "plain"


def unit_parts(unit: Unit, config: TrainConfig) -> list[tuple[str, str]]:
    """The (task, step) epochs one unit runs: a finetuning unit may add a content epoch."""
    if unit.phase == "warmup":
        return [("content", "warmup")]
    if unit.phase == "cstep":
        return [("content", "content")]
    if unit.phase == "lstep":
        return [("collab", "collab")]
    parts = [("rec", "rec")]
    if config.finetune.content_epoch and config.pretrain.content:
        parts.append(("content", "rec_content"))
    return parts


def rng_state() -> dict[str, str]:
    """torch's RNG state(s) as base64 text (only backbone dropout draws from them)."""
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def set_rng_state(state: dict[str, str]) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


def load_ds_config(config: TrainConfig, dist: Dist, device: torch.device) -> tuple[Path, dict[str, Any]] | None:
    """(path, filled DeepSpeed config) when the run uses the DeepSpeed engine, else None."""
    if not want_deepspeed(config.distributed.engine):
        return None
    path = resolve_ds_config(config.distributed.ds_config, device)
    return path, fill_ds_config(path, config.pretrain.batch_size, dist.world_size)


def model_dtype(config: TrainConfig, device: torch.device, ds: tuple[Path, dict[str, Any]] | None) -> torch.dtype:
    """The backbone dtype; under DeepSpeed "auto" follows the DeepSpeed config's precision."""
    if ds is None:
        return pick_dtype(config.model.dtype, device)
    path, ds_config = ds
    bf16 = bool(ds_config.get("bf16", {}).get("enabled"))
    wanted = torch.bfloat16 if bf16 else torch.float32
    if config.model.dtype != "auto" and pick_dtype(config.model.dtype, device) != wanted:
        raise ConfigError(f"model.dtype={config.model.dtype} does not match {path} (bf16 "
                          f"{'on' if bf16 else 'off'}): set model.dtype=auto or {str(wanted).removeprefix('torch.')}")
    return wanted


def build_engine(config: TrainConfig, dist: Dist, parts: RunParts, device: torch.device,
                 ds: tuple[Path, dict[str, Any]] | None, plans: dict[str, StepPlan]) -> Engine:
    pre = config.pretrain
    if ds is None:
        return PlainEngine(parts.model, pre.lr, config.finetune.lr, plans=plans, optimizer=config.model.table_optimizer)
    if config.model.table_optimizer != "adam":
        raise ConfigError(f"model.table_optimizer={config.model.table_optimizer} works with the plain engine only: ZeRO-3 "
                          f"hands the optimizer flat partitions, not table rows; set model.table_optimizer=adam or "
                          f"distributed.engine=plain")
    if config.model.compile:
        raise ConfigError("model.compile=true works with the plain engine only: ZeRO-3 gathers and releases "
                          "parameters in module hooks that a compiled backbone would bypass; set "
                          "model.compile=false or distributed.engine=plain")
    log.info("DeepSpeed ZeRO-3 on %d rank(s) with %s", dist.world_size, ds[0])
    return DeepSpeedEngine(parts.model, pre.lr, config.finetune.lr, ds_config=ds[1], dist=dist, device=device, plans=plans)


class Recipe:
    """Runs the whole pipeline for one config; `run()` returns the results rows.

    `start` (see `Start`) is checked against the output folder here, before anything is built.
    """

    def __init__(self, config: TrainConfig, *, progress: bool = True, start: Start = "new"):
        self.config = config
        self.dist = init_distributed(config.device, require_group=want_deepspeed(config.distributed.engine))
        if not self.dist.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # one rank reports
        self.progress = progress and self.dist.is_main
        self.out = config.resolved_output_dir()
        self.start = start
        problem = self.dist.broadcast(start_problem(self.out, start) if self.dist.is_main else None)
        if problem:
            raise ckpt.CheckpointError(problem)
        device = pick_device(config.device)
        if device.type == "cuda" and device.index is None and self.dist.active:
            device = torch.device("cuda", self.dist.local_rank)
        if self.dist.is_main:  # prepare embedded assets once, before the other ranks read them
            from data_prep.assets import resolve_backbone

            resolve_dataset(config.data.dataset, config.data.split_seed)
            resolve_backbone(config.model.backbone)
        self.dist.barrier()
        ds = load_ds_config(config, self.dist, device)
        self.parts = build_run(config, device, model_dtype(config, device, ds))
        self.resume_from = self.latest_checkpoint() if start in ("resume", "resume-or-start") else None
        init_from = config.incremental.init_from
        if init_from and self.resume_from:
            log.info("--init-from %s not applied: resuming from %s (the checkpoint wins)", init_from, self.resume_from)
        self.warm_start = warm_start(config, self.parts, self.dist, self.progress) if init_from and not self.resume_from else None
        self.engine = build_engine(config, self.dist, self.parts, device, ds, step_plans(config, self.steps_per_epoch()))
        self.identity = ckpt.identity_of(config, self.parts)
        self.checkpoint_identity = {**self.identity, "engine": engine_kind(self.engine)}
        self.splits = {s: user_item_lists(self.parts.dataset, s) for s in ("train", "val", "test")}
        # the collaborative LM loss of a model that learned item popularity only (nats per item token)
        self.popularity_entropy = popularity_entropy(self.splits["train"])
        self.tracker: Tracker | None = None  # set by train(): per-step losses go to its phase run
        self.state: dict[str, Any] = {"best_score": None, "best_tag": None, "bad_epochs": 0,
                                      "stopped": False, "history": [], "in_progress": None}
        self.model_name = ABLATIONS[config.ablation].name
        # called on every rank after each checkpointed unit (Ray Train reports through it)
        self.on_unit: Callable[[str, dict[str, float]], None] | None = None

    # ---- checkpoints -----------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def save_model(self, folder: Path) -> None:
        """Export the ID tables (and trained backbone weights) — collective, rank 0 writes."""
        tables, extra = self.engine.full_tables(), self.engine.trained_backbone()
        if self.dist.is_main:
            ckpt.save_model(folder, tables, config_to_dict(self.config), self.identity, extra_tensors=extra)
        self.dist.barrier()

    def save(self, tag: str) -> None:
        self.state["rng"] = rng_state()
        ckpt.save_checkpoint(
            self.checkpoints, tag, tables=self.engine.full_tables(), write_optimizer=self.engine.save_optimizer,
            state=self.state, config=config_to_dict(self.config), identity=self.checkpoint_identity,
            extra_tensors=self.engine.trained_backbone(), dist=self.dist,
        )
        if self.dist.is_main:
            ckpt.prune_checkpoints(self.checkpoints, keep=self.config.checkpoint.keep)
        self.dist.barrier()

    def restore(self, path: Path) -> None:
        saved = ckpt.load_checkpoint(path)
        if saved.identity.get("config_hash") != self.checkpoint_identity["config_hash"]:
            # a key the checkpoint lacks (added to the code since) counts as equal when it holds its default
            current, before = flatten(config_to_dict(self.config)), flatten(saved.config)
            defaults = flatten(config_to_dict(TrainConfig()))
            differ = [f"{k}: checkpoint has {before.get(k)!r}, current run has {current.get(k)!r}"
                      for k in sorted(set(current) | set(before))
                      if before.get(k, defaults.get(k)) != current.get(k) and not k.startswith(RESUMABLE_KEYS)]
            if differ:
                raise ckpt.CheckpointError(f"{path} was written with another config ({'; '.join(differ)}); "
                                           f"use another name= (output folder) for a different config")
        ckpt.check_identity({k: v for k, v in saved.identity.items() if k != "config_hash"},
                            {k: v for k, v in self.checkpoint_identity.items() if k != "config_hash"})
        self.engine.load_tables(saved.tables, saved.extra)
        self.engine.load_optimizer(path)
        self.state = {"in_progress": None, **saved.state}
        if "rng" in self.state:
            set_rng_state(self.state["rng"])

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint a resume continues from (rank 0 picks it), or None."""
        latest = ckpt.find_latest(self.checkpoints) if self.dist.is_main else None
        latest = self.dist.broadcast(str(latest) if latest else None)
        return Path(latest) if latest else None

    def try_resume(self) -> bool:
        latest = self.resume_from
        if latest is None:
            log.info("no complete checkpoint under %s: starting fresh", self.checkpoints)
            return False
        self.restore(latest)
        where = self.state["in_progress"]
        log.info("resumed from %s after %d completed epochs%s", latest, len(self.state["history"]),
                 f" and {where['progress']['step']} steps of {where['unit']}" if where else "")
        return True

    # ---- phases ----------------------------------------------------------------------------------

    def batches(self, task: str, rng: np.random.Generator, finetuning: bool = False) -> tuple[Iterator[Batch], int]:
        """(one epoch's batch stream for `task` — this rank's share —, its number of steps)."""
        cfg, corpora, dist = self.config, self.parts.corpora, self.dist
        if task == "collab":
            stream = corpora.collab_batches(rng, cfg.pretrain.batch_size, cfg.pretrain.reorder, dist)
        elif task == "content":
            batch_size = cfg.finetune.batch_size if finetuning else cfg.pretrain.batch_size
            stream = corpora.content_batches(rng, batch_size, dist)
        else:
            fine = cfg.finetune
            stream = corpora.finetune_batches(rng, fine.batch_size, mode=fine.mask_mode, ratio=fine.mask_ratio,
                                              target=fine.target, dist=dist)
        return stream, stream.steps

    def steps_per_epoch(self) -> dict[str, int]:
        """Optimizer steps in one epoch of each task, capped like the epochs (they size the lr schedules)."""
        caps = {"collab": self.config.pretrain.max_steps_per_epoch, "content": self.config.pretrain.max_steps_per_epoch,
                "rec": self.config.finetune.max_steps_per_epoch}
        steps = {}
        for task, cap in caps.items():
            total = self.batches(task, epoch_rng(self.config.seed, "plan", task))[1]
            steps[task] = total if cap is None else min(total, cap)
        return steps

    def epoch(self, task: str, step_name: str, unit: Unit, max_steps: int | None,
              resume: EpochProgress | None, on_checkpoint,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        rng = epoch_rng(self.config.seed, unit.phase, unit.round, unit.epoch, task)
        batches, total = self.batches(task, rng, finetuning=unit.phase == "finetune")
        return run_epoch(
            self.engine, task, step_name, batches, total=total, max_steps=max_steps,
            desc=f"{unit.group} e{unit.epoch + 1} {task}", progress=self.progress, resume=resume,
            checkpoint_every=self.config.checkpoint.every_steps, on_checkpoint=on_checkpoint,
            on_step=on_step, step_every=self.config.tracking.log_every_steps,
        )

    def phase_steps(self, group: str) -> dict[str, int]:
        """Optimizer steps so far in the MLflow phase run `group`, per loss prefix; kept in the state, so
        a resumed run continues the count."""
        counter = self.state.get("phase_steps")
        if not counter or counter["group"] != group:
            counter = self.state["phase_steps"] = {"group": group, "steps": {}}
        return counter["steps"]

    def step_logger(self, prefix: str, offset: int) -> Callable[[int, dict[str, float]], None] | None:
        """`run_epoch`'s on_step: each step's losses to the current phase run as `step_<prefix>_<loss>` at
        step `offset` + steps done; None when off (the same on every rank, as `run_epoch` needs)."""
        tracking, tracker = self.config.tracking, self.tracker
        if tracker is None or not tracking.mlflow or tracking.log_every_steps <= 0:
            return None
        return lambda step, losses: tracker.log_step_metrics({f"step_{prefix}_{k}": v for k, v in losses.items()},
                                                             offset + step)

    def validate(self, split: str, prompt: str, logit_share: bool = False) -> dict[str, float]:
        cfg = self.config.eval
        return evaluate(self.engine, self.parts.corpora, self.splits[split], prompt=prompt, seed=self.config.seed,
                        batch_size=cfg.batch_size, recall_ks=cfg.recall_ks, ndcg_ks=cfg.ndcg_ks, max_users=cfg.max_users,
                        desc=f"evaluate {split}", progress=self.progress, logit_share=logit_share)

    def run_unit(self, unit: Unit, index: int) -> dict[str, float]:
        """Train one unit (resuming inside it if a mid-epoch checkpoint says so); finetuning units
        then validate and keep the best tables."""
        fine = self.config.finetune
        max_steps = fine.max_steps_per_epoch if unit.phase == "finetune" else self.config.pretrain.max_steps_per_epoch
        where = self.state.get("in_progress")
        if where is not None and where["unit"] != unit.tag:
            where = None
        metrics: dict[str, float] = dict(where["metrics"]) if where else {}
        for part, (task, step_name) in enumerate(unit_parts(unit, self.config)):
            if where and part < where["part"]:
                continue
            resume = None
            if where and part == where["part"]:  # each rank continues from its own running sums
                resume = EpochProgress.from_json({**where["progress"], "sums": where["rank_sums"][self.dist.rank]})

            def on_checkpoint(progress: EpochProgress, part: int = part) -> None:
                self.state["in_progress"] = {"unit": unit.tag, "part": part, "metrics": metrics,
                                             "progress": progress.to_json(),
                                             "rank_sums": self.dist.all_gather(dict(progress.sums))}
                self.save(f"{index:05d}-{unit.tag}-p{part}-s{progress.step:06d}")

            prefix = {"rec": "rec", "collab": "collab", "content": "content"}[task]
            steps = self.phase_steps(unit.group)
            result = self.epoch(task, step_name, unit, max_steps, resume, on_checkpoint,
                                self.step_logger(prefix, steps.get(prefix, 0)))
            steps[prefix] = steps.get(prefix, 0) + int(result["steps"])
            metrics.update({f"{prefix}_{k}": v for k, v in result.items()})
        self.state["in_progress"] = None
        pre = self.config.pretrain
        if unit.phase == "warmup" and unit.epoch == pre.warmup_epochs - 1 and pre.collab_from_content:
            tables = self.engine.full_tables()
            self.engine.load_tables({f"collab_{kind}": tables[f"content_{kind}"] for kind in ("user", "item")}, None)
        if unit.phase == "lstep":
            metrics["collab_popularity_entropy"] = self.popularity_entropy
        if unit.phase != "finetune":
            return metrics
        val = self.validate("val", "rec", logit_share=True)
        metrics.update({f"val_{k}": v for k, v in val.items()})
        score = selection_score(val, self.config.eval.selection())
        metrics["val_selection"] = score
        if self.state["best_score"] is None or score > self.state["best_score"]:
            self.state.update(best_score=score, best_tag=unit.tag, bad_epochs=0)
            self.save_model(self.out / "best")
        else:
            self.state["bad_epochs"] += 1
            if self.state["bad_epochs"] >= fine.patience:
                self.state["stopped"] = True
        return metrics

    # ---- the whole run ---------------------------------------------------------------------------

    def train(self, tracker: Tracker) -> None:
        self.tracker = tracker
        units = schedule(self.config)
        finished = {entry["unit"] for entry in self.state["history"]}
        with contextlib.ExitStack() as stack:
            group = None
            for index, unit in enumerate(units):
                if unit.tag in finished:
                    continue
                if unit.phase == "finetune" and self.state["stopped"]:
                    break
                if unit.group != group:
                    stack.close()
                    stack.enter_context(tracker.phase(unit.group))
                    group = unit.group
                start = time.perf_counter()
                metrics = self.run_unit(unit, index)
                metrics["epoch_seconds"] = time.perf_counter() - start
                if self.parts.corpora.shards is not None:  # corrupted shards skipped so far (data.skip_corrupt_shards)
                    metrics["skipped_shards"] = float(len(self.parts.corpora.skipped_shards))
                tracker.log_metrics(metrics, step=unit.epoch)
                self.state["history"].append({"unit": unit.tag, **{k: round(v, 6) for k, v in metrics.items()}})
                self.save(f"{index:05d}-{unit.tag}")
                if self.dist.is_main:
                    log.info("%s: %s", unit.tag, _brief(metrics))
                if self.on_unit is not None:
                    self.on_unit(unit.tag, metrics)

    def final_model(self) -> None:
        """Load the validation-selected tables (finetuning) — PreRec keeps the last pretrained ones."""
        if self.config.finetune.enabled and (self.out / "best").is_dir():
            saved = ckpt.load_model(self.out / "best")
            self.engine.load_tables(saved.tables, saved.extra)

    def run(self) -> dict[str, dict[str, float]]:
        """Train (or resume), evaluate on test, run the baselines and write the results. Collective:
        every rank calls it; rank 0 alone writes files, logs to MLflow, prints and runs the baselines."""
        cfg, main = self.config, self.dist.is_main
        if main:
            if self.start == "overwrite" and holds_run(self.out):
                log.info("--overwrite: removing the run in %s", self.out)
                shutil.rmtree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()
        if self.start in ("resume", "resume-or-start"):
            self.try_resume()
        if main:
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            if self.warm_start:
                self.warm_start.write(self.out)
                print(self.warm_start.summary())
        tracking = cfg.tracking
        with Tracker.of_config(cfg, enabled=main) as tracker:
            tracker.start(tracking.run_name or cfg.name, config_to_dict(cfg),
                          tags={"model": self.model_name, "ablation": cfg.ablation, "dataset": self.parts.dataset.name,
                                "engine": self.checkpoint_identity["engine"],
                                **({PARENT_TAG: tracking.parent_run_id} if tracking.parent_run_id else {}), **tracking.tags})
            tracker.log_dict(config_to_dict(cfg), "config.yaml")
            if self.warm_start:
                self.warm_start.log(tracker)
            if isinstance(self.engine, DeepSpeedEngine):
                tracker.log_dict(self.engine.ds_config, "deepspeed.json")
            started = time.perf_counter()
            self.train(tracker)
            train_seconds = time.perf_counter() - started
            self.final_model()
            prompt = scoring_prompt(cfg)
            with tracker.phase("test"):
                test = self.validate("test", prompt)
                val = self.validate("val", prompt)
                tracker.log_metrics({**{f"test_{k}": v for k, v in test.items()}, **{f"val_{k}": v for k, v in val.items()}})
            rows = {self.model_name: {**test, "seconds": train_seconds}}
            if main and (cfg.baselines.mostpop or cfg.baselines.multivae or cfg.baselines.ease):
                with tracker.phase("baselines"):
                    base = run_baselines(self.splits["train"], self.splits["val"], self.splits["test"], cfg.baselines,
                                         cfg.eval, cfg.seed, self.progress)
                    for name, metrics in base.items():
                        tracker.log_metrics({f"{name}_{k}": v for k, v in metrics.items()})
                rows.update(base)
            self.save_model(self.out / "model")
            ranks = self.dist.all_gather(self.engine.stats())
            if not main:
                return rows
            table = write_results(self.out, rows, cfg.eval.columns(),
                                  {"dataset": self.parts.dataset.name, "dataset_hash": self.parts.dataset_hash,
                                   "backbone": self.parts.backbone_ref, "engine": self.checkpoint_identity["engine"],
                                   "ranks": ranks, "history": self.state["history"],
                                   "popularity_entropy": self.popularity_entropy,
                                   "best_epoch": self.state["best_tag"]})
            tracker.log_metrics({f"test_{k}": v for k, v in test.items()}, parent=True)
            if self.state["history"]:
                plot_training_curves(self.state["history"], self.out / "curves.png",
                                     title=f"{cfg.name}: {self.model_name} on {self.parts.dataset.name}")
            for name in ("results.md", "results.json", "config.yaml", "curves.png"):
                if (self.out / name).is_file():
                    tracker.log_artifact(self.out / name)
            tracker.log_artifact(self.out / "model" / "tables.safetensors", "model")
            tracker.log_artifact(save_pyfunc(self.out / "model", self.out / "pyfunc"), "pyfunc")
        print(f"\n{table}")
        print(f"{self.model_name}: trained in {train_seconds / 60:.1f} min ({len(self.state['history'])} epoch units, "
              f"best finetuning epoch {self.state['best_tag'] or 'n/a'}; engine {self.checkpoint_identity['engine']})")
        print(f"results: {self.out / 'results.md'}  model: {self.out / 'model'}")
        print(f"serve: cllm4rec serve {self.out / 'model'}")
        print(f"or with MLflow: mlflow models serve -m {self.out / 'pyfunc'} --env-manager local -p 5001")
        if tracker.run_id:
            print(f"MLflow: {tracker.tracking_uri} (run {tracker.run_id}; pyfunc model: runs:/{tracker.run_id}/pyfunc)")
        return rows


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("lm_loss", "lm_per_target", "mr_loss", "popularity_entropy"))
            or k in ("val_recall@20", "val_ndcg@100", "val_logit_user_share")]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def train(config: TrainConfig, *, start: Start = "new", progress: bool = True) -> dict[str, dict[str, float]]:
    """Run the recipe for `config` (see module docstring) into its output folder as `start` asks
    (see `Start`); returns {model name: test metrics}."""
    return Recipe(config, progress=progress, start=start).run()
