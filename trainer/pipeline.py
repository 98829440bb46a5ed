"""The CLLM4Rec recipe: content warm-up → alternating L/C rounds → finetuning with validation-based
selection → test → results table beside Multi-VAE and EASE (SPEC 5-8).

Training is a list of epoch units; after each unit the tables, optimizer states and position are
checkpointed, so `resume=True` continues with the next unit (documents of every epoch are seeded by
(seed, phase, epoch), so a resumed run sees what an uninterrupted one would).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import torch
import yaml

from cllm4rec.metrics import selection_score
from data_prep.atomic import atomic_write_text
from trainer import checkpoint as ckpt
from trainer.baselines import run_baselines
from trainer.build import RunParts, build_run, load_weights
from trainer.config import TrainConfig, config_to_dict, flatten
from trainer.data import Batch, epoch_rng, user_item_lists
from trainer.engine import PlainEngine
from trainer.evaluate import evaluate
from trainer.loop import run_epoch
from trainer.results import metric_columns, write_results
from trainer.tracking import Tracker

log = logging.getLogger(__name__)
ABLATION_NAMES = {"none": "CLLM4Rec", "scratch": "LLM-Scratch", "cf": "LLM-CF", "ftall": "LLM-FtAll",
                  "ftall-lora": "LLM-FtAll (LoRA)", "fixord": "LLM-FixOrd", "prerec": "LLM-PreRec"}
# Epoch budgets may change on resume (to extend a run); everything else must match the checkpoint.
RESUMABLE_KEYS = ("pretrain.warmup_epochs", "pretrain.rounds", "finetune.epochs", "finetune.patience",
                  "tracking", "baselines", "eval.max_users", "eval.batch_size", "output_dir", "device",
                  "data.dataset")  # the dataset itself is pinned by dataset_hash


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


def identity_of(config: TrainConfig, parts: RunParts) -> dict[str, Any]:
    return {
        "config_hash": ckpt.config_hash(config_to_dict(config), ignore=RESUMABLE_KEYS),
        "dataset_hash": parts.dataset_hash,
        "backbone": parts.backbone_ref,
        "tokenizer": parts.backbone_ref,
        "n_users": parts.dataset.n_users,
        "n_items": parts.dataset.n_items,
        "vocab_rows": parts.model.vocab_rows,
    }


class Recipe:
    """Runs the whole pipeline for one config; `run()` returns the results rows."""

    def __init__(self, config: TrainConfig, *, progress: bool = True):
        self.config = config
        self.progress = progress
        self.out = config.resolved_output_dir()
        self.parts = build_run(config)
        pre = config.pretrain
        self.engine = PlainEngine(self.parts.model, pre.lr, config.finetune.lr)
        self.identity = identity_of(config, self.parts)
        self.splits = {s: user_item_lists(self.parts.dataset, s) for s in ("train", "val", "test")}
        self.state: dict[str, Any] = {"best_score": None, "best_tag": None, "bad_epochs": 0,
                                      "stopped": False, "history": []}
        self.model_name = ABLATION_NAMES[config.ablation]

    # ---- checkpoints -----------------------------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def trained_backbone(self) -> dict[str, torch.Tensor] | None:
        """The backbone weights that training changes (FtAll, Scratch, LoRA adapters), else None."""
        extra = {n: p.detach() for n, p in self.parts.model.backbone.named_parameters() if p.requires_grad}
        return extra or None

    def save_model(self, folder: Path) -> None:
        ckpt.save_model(folder, self.parts.model.id_tables(), config_to_dict(self.config), self.identity,
                        extra_tensors=self.trained_backbone())

    def save(self, tag: str) -> None:
        ckpt.save_checkpoint(
            self.checkpoints, tag, tables=self.parts.model.id_tables(), optimizers=self.engine.optimizers,
            state=self.state, config=config_to_dict(self.config), identity=self.identity,
            extra_tensors=self.trained_backbone(),
        )
        ckpt.prune_checkpoints(self.checkpoints, keep=2)

    def restore(self, path: Path, optimizers: bool = True) -> None:
        saved = ckpt.load_checkpoint(path)
        if saved.identity.get("config_hash") != self.identity["config_hash"]:
            current, before = flatten(config_to_dict(self.config)), flatten(saved.config)
            differ = [f"{k}: checkpoint has {before.get(k)!r}, current run has {current.get(k)!r}"
                      for k in sorted(set(current) | set(before))
                      if before.get(k) != current.get(k) and not k.startswith(RESUMABLE_KEYS)]
            raise ckpt.CheckpointError(f"{path} was written with another config ({'; '.join(differ)}); "
                                       f"use another name= (output folder) for a different config")
        ckpt.check_identity(saved.identity, self.identity)
        load_weights(self.parts.model, saved.tables, saved.extra)
        if optimizers:
            for name, opt in self.engine.optimizers.items():
                saved.restore_optimizer(name, opt)
            self.state = saved.state

    def try_resume(self) -> bool:
        latest = ckpt.find_latest(self.checkpoints)
        if latest is None:
            log.info("no complete checkpoint under %s: starting fresh", self.checkpoints)
            return False
        self.restore(latest)
        log.info("resumed from %s after %d completed epochs", latest, len(self.state["history"]))
        return True

    # ---- phases ----------------------------------------------------------------------------------

    def batches(self, task: str, rng: np.random.Generator, finetuning: bool = False) -> tuple[Iterator[Batch], int]:
        """(one epoch's batch stream for `task`, its number of batches)."""
        cfg, corpora = self.config, self.parts.corpora
        if task == "collab":
            batch_size = cfg.pretrain.batch_size
            batches = corpora.collab_batches(rng, batch_size, cfg.pretrain.reorder)
            n_docs = len(corpora.collab_users())
        elif task == "content":
            batch_size = cfg.finetune.batch_size if finetuning else cfg.pretrain.batch_size
            batches = corpora.content_batches(rng, batch_size)
            n_docs = len(corpora.content)
        else:
            fine = cfg.finetune
            batch_size = fine.batch_size
            batches = corpora.finetune_batches(rng, batch_size, mode=fine.mask_mode, ratio=fine.mask_ratio, target=fine.target)
            n_docs = len(corpora.collab_users())
        return batches, -(-n_docs // batch_size)

    def epoch(self, task: str, optimizer: str, unit: Unit, max_steps: int | None) -> dict[str, float]:
        rng = epoch_rng(self.config.seed, unit.phase, unit.round, unit.epoch, task)
        batches, total = self.batches(task, rng, finetuning=unit.phase == "finetune")
        return run_epoch(
            self.engine, task, optimizer, batches, total=total, max_steps=max_steps,
            lambda_c=self.parts.model.lambda_c, lambda_l=self.parts.model.lambda_l,
            desc=f"{unit.group} e{unit.epoch + 1} {task}", progress=self.progress,
        )

    def validate(self, split: str, prompt: str) -> dict[str, float]:
        cfg = self.config.eval
        return evaluate(self.engine, self.parts.corpora, self.splits[split], prompt=prompt, seed=self.config.seed,
                        batch_size=cfg.batch_size, recall_ks=cfg.recall_ks, ndcg_ks=cfg.ndcg_ks, max_users=cfg.max_users,
                        desc=f"evaluate {split}", progress=self.progress)

    def run_unit(self, unit: Unit) -> dict[str, float]:
        pre, fine = self.config.pretrain, self.config.finetune
        if unit.phase == "warmup" or unit.phase == "cstep":
            return {f"content_{k}": v for k, v in self.epoch("content", "content", unit, pre.max_steps_per_epoch).items()}
        if unit.phase == "lstep":
            return {f"collab_{k}": v for k, v in self.epoch("collab", "collab", unit, pre.max_steps_per_epoch).items()}
        metrics = {f"rec_{k}": v for k, v in self.epoch("rec", "rec", unit, fine.max_steps_per_epoch).items()}
        if fine.content_epoch and pre.content:
            metrics.update({f"content_{k}": v for k, v in self.epoch("content", "rec_content", unit, fine.max_steps_per_epoch).items()})
        val = self.validate("val", "rec")
        metrics.update({f"val_{k}": v for k, v in val.items()})
        score = selection_score(val, metric_columns(self.config.eval.recall_ks, self.config.eval.ndcg_ks))
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
                metrics = self.run_unit(unit)
                metrics["epoch_seconds"] = time.perf_counter() - start
                tracker.log_metrics(metrics, step=unit.epoch)
                self.state["history"].append({"unit": unit.tag, **{k: round(v, 6) for k, v in metrics.items()}})
                self.save(f"{index:05d}-{unit.tag}")
                log.info("%s: %s", unit.tag, _brief(metrics))

    def final_model(self) -> None:
        """Load the validation-selected tables (finetuning) — PreRec keeps the last pretrained ones."""
        if self.config.finetune.enabled and (self.out / "best").is_dir():
            saved = ckpt.load_model(self.out / "best")
            load_weights(self.parts.model, saved.tables, saved.extra)

    def run(self, resume: bool = False) -> dict[str, dict[str, float]]:
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.try_resume()
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        tracking = cfg.tracking
        with Tracker(tracking.mlflow, tracking.tracking_uri, tracking.experiment, self.out.parent / "mlflow.db") as tracker:
            tracker.start(tracking.run_name or cfg.name, config_to_dict(cfg),
                          tags={"model": self.model_name, "ablation": cfg.ablation, "dataset": self.parts.dataset.name})
            tracker.log_dict(config_to_dict(cfg), "config.yaml")
            started = time.perf_counter()
            self.train(tracker)
            train_seconds = time.perf_counter() - started
            self.final_model()
            prompt = "rec" if cfg.finetune.enabled else "interaction"
            with tracker.phase("test"):
                test = self.validate("test", prompt)
                val = self.validate("val", prompt)
                tracker.log_metrics({**{f"test_{k}": v for k, v in test.items()}, **{f"val_{k}": v for k, v in val.items()}})
            rows = {self.model_name: {**test, "seconds": train_seconds}}
            if cfg.baselines.multivae or cfg.baselines.ease:
                with tracker.phase("baselines"):
                    base = run_baselines(self.splits["train"], self.splits["val"], self.splits["test"], cfg.baselines,
                                         cfg.eval, cfg.seed, self.progress)
                    for name, metrics in base.items():
                        tracker.log_metrics({f"{name}_{k}": v for k, v in metrics.items()})
                rows.update(base)
            self.save_model(self.out / "model")
            table = write_results(self.out, rows, metric_columns(cfg.eval.recall_ks, cfg.eval.ndcg_ks),
                                  {"dataset": self.parts.dataset.name, "dataset_hash": self.parts.dataset_hash,
                                   "backbone": self.parts.backbone_ref, "history": self.state["history"],
                                   "best_epoch": self.state["best_tag"]})
            tracker.log_metrics({f"test_{k}": v for k, v in test.items()}, parent=True)
            for name in ("results.md", "results.json", "config.yaml"):
                tracker.log_artifact(self.out / name)
            tracker.log_artifact(self.out / "model" / "tables.safetensors", "model")
        print(f"\n{table}")
        print(f"{self.model_name}: trained in {train_seconds / 60:.1f} min ({len(self.state['history'])} epoch units, "
              f"best finetuning epoch {self.state['best_tag'] or 'n/a'})")
        print(f"results: {self.out / 'results.md'}  model: {self.out / 'model'}")
        if tracker.run_id:
            print(f"MLflow: {tracker.tracking_uri} (run {tracker.run_id})")
        return rows


def _brief(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k.endswith(("lm_loss", "mr_loss")) or k in ("val_recall@20", "val_ndcg@100")]
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, dict[str, float]]:
    """Run the recipe for `config` (see module docstring); returns {model name: test metrics}."""
    return Recipe(config, progress=progress).run(resume=resume)
