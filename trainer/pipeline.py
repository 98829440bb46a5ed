"""One training run: content warm-up → alternating L/C rounds → finetuning with validation-based
selection → test → results table beside MostPop, Multi-VAE and EASE (docs/method.md §8–§11).

Training is a list of epoch units (trainer/phases.py); after each unit (and every
`checkpoint.every_steps` steps inside one) the tables, optimizer state and position are checkpointed,
so `start="resume"` continues from the last complete checkpoint in the same phase, epoch and step
(documents of every epoch are seeded by (seed, phase, round, epoch, task), docs/method.md §8.4, so a resumed run sees what an
uninterrupted one would).

The same run works in one process (plain engine) and under DeepSpeed ZeRO-3 on any number of
ranks: every rank runs every method here; only rank 0 writes files, logs to MLflow and prints.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import torch
import yaml

from cllm4rec.interactions import popularity_entropy
from cllm4rec.metrics import selection_score
from cllm4rec.table_init import token_like_rows
from cllm4rec.tasks import Task
from cllm4rec.templates import ScoringPrompt
from data_prep.atomic import atomic_write_text
from trainer import checkpoint as ckpt
from trainer.ablations import ABLATIONS
from trainer.baselines import run_baselines
from trainer.build import build_run, pick_device, resolve_dataset
from trainer.config import TrainConfig, config_to_dict
from trainer.curves import plot_training_curves
from trainer.data import Batch, epoch_rng, user_item_lists
from trainer.distributed import init_distributed
from trainer.engine_setup import build_engine, load_ds_config, model_dtype, table_layout, want_deepspeed
from trainer.evaluate import evaluate, scoring_prompt
from trainer.incremental import initial_model
from trainer.loop import EpochProgress, rank_share, run_epoch
from trainer.memory_check import check_memory, planned_engine
from trainer.phases import Phase, Stage, StepKind, Unit, training_units
from trainer.results import write_results
from trainer.resume import config_differences, latest_checkpoint, rng_state, set_rng_state
from trainer.run_folder import Start, make_output_folder, start_problem
from trainer.schedule import PLANNED_STEPS, step_plans
from trainer.serving import save_pyfunc
from trainer.tracking import PARENT_TAG, Tracker

log = logging.getLogger(__name__)


class TrainingRun:
    """One training run of one config, in its output folder; `run()` trains and returns the results rows.

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
        dtype = model_dtype(config, device, ds)
        # refuse, before anything is built, a run whose ranks cannot hold it (the estimate's terms in the error)
        check_memory(config, self.dist, planned_engine(config, want_deepspeed(config.distributed.engine)), device,
                     dtype, ds[1] if ds else None)
        self.parts = build_run(config, device, dtype, table_layout(config, self.dist, ds))
        # the checkpoint a resume continues from, found before the engine is built: it wins over --init-from
        resuming = start in ("resume", "resume-or-start")
        self.resume_from = latest_checkpoint(self.checkpoints, self.dist) if resuming else None
        self.warm_start = initial_model(config, self.parts, self.dist, self.progress, self.resume_from)
        self.engine = build_engine(config, self.dist, self.parts, device, ds, step_plans(config, self.steps_per_epoch()))
        self.identity = ckpt.identity_of(config, self.parts)
        self.checkpoint_identity = {**self.identity, "engine": self.engine.kind}
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
        """Export the ID tables (in the engine's layout) and trained backbone weights — collective."""
        extra = self.engine.trained_backbone()
        ckpt.save_model_from_ranks(folder, self.engine.save_tables, config_to_dict(self.config), self.identity,
                                   extra_tensors=extra, dist=self.dist)

    def save(self, tag: str) -> None:
        self.state["rng"] = rng_state()
        ckpt.save_checkpoint(
            self.checkpoints, tag, write_tables=self.engine.save_tables, write_optimizer=self.engine.save_optimizer,
            state=self.state, config=config_to_dict(self.config), identity=self.checkpoint_identity,
            extra_tensors=self.engine.trained_backbone(), dist=self.dist,
        )
        if self.dist.is_main:
            ckpt.prune_checkpoints(self.checkpoints, keep=self.config.checkpoint.keep)
        self.dist.barrier()

    def restore(self, path: Path) -> None:
        saved = ckpt.load_checkpoint(path, tables=False)
        if saved.identity.get("config_hash") != self.checkpoint_identity["config_hash"]:
            differ = config_differences(self.config, saved.config)
            if differ:
                raise ckpt.CheckpointError(f"{path} was written with another config ({'; '.join(differ)}); "
                                           f"use another name= (output folder) for a different config")
        ckpt.check_identity({k: v for k, v in saved.identity.items() if k != "config_hash"},
                            {k: v for k, v in self.checkpoint_identity.items() if k != "config_hash"})
        self.engine.restore_tables(path, saved.extra)
        self.engine.load_optimizer(path)
        self.state = {"in_progress": None, **saved.state}
        if "rng" in self.state:
            set_rng_state(self.state["rng"])

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

    def batches(self, step: StepKind, rng: np.random.Generator) -> tuple[Iterator[Batch], int]:
        """(one epoch's batch stream for `step` — this rank's share —, its number of steps): the corpus of
        its task, at its stage's batch size."""
        cfg, corpora, dist = self.config, self.parts.corpora, self.dist
        if step.task is Task.COLLAB_LM:
            stream = corpora.collab_batches(rng, cfg.pretrain.batch_size, cfg.pretrain.reorder, dist)
        elif step.task is Task.CONTENT_LM:
            stream = corpora.content_batches(rng, self.batch_size(step.stage), dist)
        else:
            fine = cfg.finetune
            stream = corpora.finetune_batches(rng, fine.batch_size, mode=fine.mask_mode, ratio=fine.mask_ratio,
                                              target=fine.target, dist=dist)
        return stream, stream.steps

    def batch_size(self, stage: Stage) -> int:
        return self.config.finetune.batch_size if stage is Stage.FINETUNE else self.config.pretrain.batch_size

    def max_steps(self, stage: Stage) -> int | None:
        """The cap on an epoch's steps in `stage` (smoke runs)."""
        cfg = self.config
        return cfg.finetune.max_steps_per_epoch if stage is Stage.FINETUNE else cfg.pretrain.max_steps_per_epoch

    def steps_per_epoch(self) -> dict[StepKind, int]:
        """Optimizer steps in one epoch of each of PLANNED_STEPS, capped like the epochs (they size the lr
        schedules)."""
        steps = {}
        for step in PLANNED_STEPS:
            total = self.batches(step, epoch_rng(self.config.seed, "plan", step.task))[1]
            cap = self.max_steps(step.stage)
            steps[step] = total if cap is None else min(total, cap)
        return steps

    def epoch(self, step: StepKind, unit: Unit, resume: EpochProgress | None,
              on_checkpoint: Callable[[EpochProgress], None], on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """One epoch of `step`s in `unit` (see `run_epoch`); its documents are seeded by the unit and the task."""
        rng = epoch_rng(self.config.seed, unit.phase, unit.round, unit.epoch, step.task)
        batches, total = self.batches(step, rng)
        return run_epoch(
            self.engine, step, batches, total=total, max_steps=self.max_steps(step.stage),
            desc=f"{unit.tracking_run} e{unit.epoch + 1} {step.task}", progress=self.progress, resume=resume,
            checkpoint_every=self.config.checkpoint.every_steps, on_checkpoint=on_checkpoint,
            on_step=on_step, step_every=self.config.tracking.log_every_steps,
        )

    def phase_steps(self, tracking_run: str) -> dict[str, int]:
        """Optimizer steps so far in the MLflow phase run `tracking_run`, per task; kept in the state
        (under "group", its key in older checkpoints too), so a resumed run continues the count."""
        counter = self.state.get("phase_steps")
        if not counter or counter["group"] != tracking_run:
            counter = self.state["phase_steps"] = {"group": tracking_run, "steps": {}}
        return counter["steps"]

    def step_logger(self, prefix: str, offset: int) -> Callable[[int, dict[str, float]], None] | None:
        """`run_epoch`'s on_step: each step's losses to the current phase run as `step_<prefix>_<loss>` at
        step `offset` + steps done; None when off (the same on every rank, as `run_epoch` needs)."""
        tracking, tracker = self.config.tracking, self.tracker
        if tracker is None or not tracking.mlflow or tracking.log_every_steps <= 0:
            return None
        return lambda step, losses: tracker.log_step_metrics({f"step_{prefix}_{k}": v for k, v in losses.items()},
                                                             offset + step)

    def validate(self, split: str, prompt: ScoringPrompt, logit_share: bool = False) -> dict[str, float]:
        cfg = self.config.eval
        return evaluate(self.engine, self.parts.corpora, self.splits[split], prompt=prompt, seed=self.config.seed,
                        batch_size=cfg.batch_size, recall_ks=cfg.recall_ks, ndcg_ks=cfg.ndcg_ks, max_users=cfg.max_users,
                        desc=f"evaluate {split}", progress=self.progress, logit_share=logit_share)

    def rank_sums(self, saved: list[dict[str, float]]) -> dict[str, float]:
        """This rank's share of a mid-epoch checkpoint's running sums (`rank_share`); a checkpoint of
        another number of ranks inside an epoch read from shards is refused (each rank cuts its own
        shards into batches, so the epoch's steps differ)."""
        if len(saved) != self.dist.world_size and self.config.data.shards:
            raise ckpt.CheckpointError(f"a checkpoint written inside an epoch by {len(saved)} ranks resumes on "
                                       f"{self.dist.world_size} only without data.shards (each rank reads its own "
                                       f"shards): resume on {len(saved)} ranks, or from a checkpoint between epochs")
        return rank_share(saved, self.dist.rank, self.dist.world_size)

    def collab_from_content(self, tables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The collaborative tables `pretrain.collab_from_content` sets at the end of the warm-up, from
        `tables` (the engine's `own_rows`): the content ones (of `collab_from_content_tables`), copied as they
        are or as token-like rows (`collab_from_content_token_alpha`), centred on the whole table's mean.
        Collective (a ZeRO-3 backbone, row-sharded tables)."""
        pre = self.config.pretrain
        kinds = pre.collab_copied_kinds()
        alpha = pre.collab_from_content_token_alpha
        words = self.parts.model.backbone.get_input_embeddings()
        return {f"collab_{kind}": tables[f"content_{kind}"] if alpha is None else
                token_like_rows(tables[f"content_{kind}"], words, alpha, self.engine.column_mean(tables[f"content_{kind}"]))
                .to(tables[f"content_{kind}"].dtype)
                for kind in kinds}

    def run_unit(self, unit: Unit, index: int) -> dict[str, float]:
        """Train one unit (resuming inside it if a mid-epoch checkpoint says so); finetuning units
        then validate and keep the best tables."""
        where = self.state.get("in_progress")
        if where is not None and where["unit"] != unit.tag:
            where = None
        metrics: dict[str, float] = dict(where["metrics"]) if where else {}
        for part, step in enumerate(unit.steps(self.config)):
            if where and part < where["part"]:
                continue
            resume = None
            if where and part == where["part"]:  # each rank continues from its own running sums
                resume = EpochProgress.from_json({**where["progress"], "sums": self.rank_sums(where["rank_sums"])})

            def on_checkpoint(progress: EpochProgress, part: int = part) -> None:
                self.state["in_progress"] = {"unit": unit.tag, "part": part, "metrics": metrics,
                                             "progress": progress.to_json(),
                                             "rank_sums": self.dist.all_gather(dict(progress.sums))}
                self.save(f"{index:05d}-{unit.tag}-p{part}-s{progress.step:06d}")

            prefix = step.task.value  # the task names its metrics: collab_lm_loss, rec_mr_loss, ...
            steps = self.phase_steps(unit.tracking_run)
            result = self.epoch(step, unit, resume, on_checkpoint, self.step_logger(prefix, steps.get(prefix, 0)))
            steps[prefix] = steps.get(prefix, 0) + int(result["steps"])
            metrics.update({f"{prefix}_{k}": v for k, v in result.items()})
        self.state["in_progress"] = None
        pre = self.config.pretrain
        if unit.phase is Phase.WARMUP and unit.epoch == pre.warmup_epochs - 1 and pre.collab_from_content:
            self.engine.load_own_rows(self.collab_from_content(self.engine.own_rows()))
        if unit.phase is Phase.L_STEP:
            metrics["collab_popularity_entropy"] = self.popularity_entropy
        if unit.phase is not Phase.FINETUNE:
            return metrics
        val = self.validate("val", ScoringPrompt.RECOMMENDATION, logit_share=True)
        metrics.update({f"val_{k}": v for k, v in val.items()})
        score = selection_score(val, self.config.eval.selection())
        metrics["val_selection"] = score
        if self.state["best_score"] is None or score > self.state["best_score"]:
            self.state.update(best_score=score, best_tag=unit.tag, bad_epochs=0)
            self.save_model(self.out / "best")
        else:
            self.state["bad_epochs"] += 1
            if self.state["bad_epochs"] >= self.config.finetune.patience:
                self.state["stopped"] = True
        return metrics

    # ---- the whole run ---------------------------------------------------------------------------

    def train(self, tracker: Tracker) -> None:
        self.tracker = tracker
        units = training_units(self.config)
        finished = {entry["unit"] for entry in self.state["history"]}
        with contextlib.ExitStack() as stack:
            tracking_run = None
            for index, unit in enumerate(units):
                if unit.tag in finished:
                    continue
                if unit.phase is Phase.FINETUNE and self.state["stopped"]:
                    break
                if unit.tracking_run != tracking_run:
                    stack.close()
                    stack.enter_context(tracker.phase(unit.tracking_run))
                    tracking_run = unit.tracking_run
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
            saved = ckpt.load_model(self.out / "best", tables=False)
            self.engine.restore_tables(saved.path, saved.extra)

    def run(self) -> dict[str, dict[str, float]]:
        """Train (or resume), evaluate on test, run the baselines and write the results. Collective:
        every rank calls it; rank 0 alone writes files, logs to MLflow, prints and runs the baselines."""
        cfg, main = self.config, self.dist.is_main
        if main:
            make_output_folder(self.out, self.start)
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
            for name, content in self.engine.config_files().items():
                tracker.log_dict(content, name)
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
            for name in ckpt.table_files(self.out / "model"):
                tracker.log_artifact(self.out / "model" / name, "model")
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
    """One training run of `config` (see module docstring) in its output folder as `start` asks (see
    `Start`); returns {model name: test metrics}."""
    return TrainingRun(config, progress=progress, start=start).run()
