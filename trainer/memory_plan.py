"""The bytes each rank of a run holds, term by term: docs/cluster.md's arithmetic (sections 1, 3 and 5)
for the shapes of one run. Pure: shapes and settings in, terms out; nothing is read, measured or
allocated here (trainer/memory_check.py gathers the inputs, measures the memory and refuses a run).

A term is alive at some of a run's moments (`MOMENTS`): while the model is built; during a training step
(the state the optimizer keeps from its first step, plus the step's working sets); while a checkpoint or
model is written (between steps); while rank 0 fits the EASE baseline after training. A rank's peak is its
largest total over the moments, for the GPU's memory and for host memory apart; in a CPU run every term is
host memory. Rank 0's terms are counted on every rank (it alone writes checkpoints and fits EASE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cllm4rec.losses import LOGIT_BLOCK_BYTES

BUILD, STEP, SAVE, BASELINES = "build", "step", "save", "baselines"
MOMENTS = (BUILD, STEP, SAVE, BASELINES)
TRAINING = (STEP, SAVE, BASELINES)  # from the first step (or deepspeed.initialize) to the end of the run
DEVICE, HOST = "device", "host"
ENGINES = ("plain", "zero3", "rows")
GPU_ALLOWANCE = 3 * 10**9  # NCCL and allocator buffers, fragmentation (cluster.md, section 3)
PROMPT_TOKENS = 16  # a document's prompt words and ID tokens beside its items or its text
GIB = 2**30

FIX_SHARD = "spread the tables over ranks: distributed.table_sharding=rows (or zero3) under a launcher"
FIX_RANKS = "more ranks: each holds 1/R of it"
FIX_OFFLOAD = "more ranks, or distributed.ds_config=zero3_offload (optimizer state in host memory)"
FIX_PARTITION = "DeepSpeed ZeRO-3 partitions the backbone over the ranks (a launcher, distributed.table_sharding=zero3)"
FIX_GATHERED = "distributed.table_sharding=rows: no whole table is gathered in a step"
FIX_WHOLE_BUILD = "distributed.partitioned_build=true (the default; not with incremental.init_from)"
FIX_ROWS_BUILD = ("incremental.init_from makes the row-sharded engine build whole tables on every rank before it "
                  "shards them: start from scratch, or distributed.table_sharding=zero3")
FIX_ACTIVATIONS = ("model.activation_checkpointing=true, a smaller pretrain.batch_size / finetune.batch_size or "
                   "data.max_items, or more ranks")
FIX_HOST = "more host memory per rank: fewer ranks per node"
FIX_EASE = "baselines.ease=false"


@dataclass(frozen=True)
class Shapes:
    """The sizes the bytes follow."""

    users: int  # N
    items: int  # J
    dim: int  # K: the backbone's hidden size, the ID tables' width
    layers: int  # L
    heads: int  # a: attention heads
    backbone_params: int  # P: the backbone's distinct parameter elements (tied weights once), adapters included
    trained_backbone: int  # backbone elements the optimizer trains: P (full), the LoRA adapters', or 0
    seq_len: int  # s: tokens of the longest document
    batch: int  # b: documents per rank in one step
    vocab: int  # V: the backbone's vocabulary logits per token (rows of its output embedding)
    main_tokens: int  # most main-part tokens of a content document (`data.max_main_tokens`)

    @property
    def set_elements(self) -> int:
        """Elements of one table set (its user and item tables): (N + J)·K."""
        return (self.users + self.items) * self.dim

    @property
    def table_elements(self) -> int:
        """Elements of the four tables: E = 2·(N + J)·K."""
        return 2 * self.set_elements

    @property
    def largest_table(self) -> int:
        """Elements of the largest table: max(N, J)·K."""
        return max(self.users, self.items) * self.dim


@dataclass(frozen=True)
class Setup:
    """How the run holds them: the engine, its ranks and precision, what the schedule trains."""

    engine: str  # one of ENGINES: "plain", "zero3" (DeepSpeed ZeRO-3), "rows" (row-sharded tables)
    ranks: int  # R
    gpu: bool  # the device is a GPU; else every term is host memory
    dtype_bytes: int  # the backbone's compute dtype: 2 (bf16) or 4 (fp32)
    trained_sets: int  # table sets the schedule trains (1 or 2): each keeps Adam m, v from its first step
    item_head: bool  # the schedule has item-softmax steps (L-steps, finetuning)
    vocab_head: bool  # the schedule has content-LM steps (warm-up, C-steps, finetuning content epochs)
    checkpointing: bool  # model.activation_checkpointing
    ease: bool  # rank 0 fits EASE after training
    partitioned_build: bool = False  # ZeRO-3: the model is built into its partitions; rows: each rank builds its rows
    offload_params: bool = False  # ZeRO-3 `offload_param`: parameter partitions in host memory
    offload_optimizer: bool = False  # ZeRO-3 `offload_optimizer`: masters, gradients, Adam state in host memory
    grad_bytes: int = 2  # ZeRO-3: bytes per element of the gradient partitions
    max_live: int = 10**9  # ZeRO-3 `stage3_max_live_parameters`

    @property
    def whole_build(self) -> bool:
        """Whether each rank builds the whole model (backbone and four fp32 tables) first."""
        return not (self.engine in ("zero3", "rows") and self.partitioned_build)


@dataclass(frozen=True)
class Term:
    """Bytes one rank holds for one purpose, in one memory (DEVICE or HOST), alive at some of MOMENTS;
    `fix`: what makes it smaller."""

    name: str
    nbytes: int
    memory: str
    moments: tuple[str, ...]
    fix: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    """A run's terms per rank, with the shapes and setup they follow."""

    shapes: Shapes
    setup: Setup
    terms: tuple[Term, ...]

    def memories(self) -> tuple[str, ...]:
        """The memories the terms fill: (DEVICE, HOST) on a GPU, (HOST,) on a CPU."""
        return tuple(m for m in (DEVICE, HOST) if any(t.memory == m for t in self.terms))

    def total(self, memory: str, moment: str) -> int:
        """Bytes of `memory` alive at `moment`."""
        return sum(t.nbytes for t in self.terms if t.memory == memory and moment in t.moments)

    def peak(self, memory: str) -> tuple[int, str]:
        """(bytes, moment) of the largest total of `memory` over MOMENTS (the first on ties)."""
        return max(((self.total(memory, m), m) for m in MOMENTS), key=lambda pair: pair[0])

    def fixes(self, memory: str, moment: str) -> list[str]:
        """What shrinks `memory` at `moment`: the fixes of its terms, largest term first, each once."""
        alive = sorted((t for t in self.terms if t.memory == memory and moment in t.moments and t.fix),
                       key=lambda t: -t.nbytes)
        return list(dict.fromkeys(t.fix for t in alive))


def plan_memory(shapes: Shapes, setup: Setup) -> MemoryPlan:
    """Every term one rank of `setup` holds at `shapes`."""
    if setup.engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {setup.engine!r}")
    engine_terms = {"plain": plain_terms, "zero3": zero3_terms, "rows": rows_terms}[setup.engine]
    terms = [*engine_terms(shapes, setup), *step_terms(shapes, setup), *common_terms(shapes, setup)]
    return MemoryPlan(shapes, setup, tuple(t for t in terms if t.nbytes > 0))


def compute_memory(setup: Setup) -> str:
    """Where the device's terms go: the GPU, or host memory in a CPU run."""
    return DEVICE if setup.gpu else HOST


def plain_terms(shapes: Shapes, setup: Setup) -> list[Term]:
    """One process: the whole backbone and tables, Adam state of the trained sets, one set's kept gradients."""
    d, dev, s = setup.dtype_bytes, compute_memory(setup), shapes.set_elements
    trained = shapes.trained_backbone
    return [
        Term(f"backbone, whole ({shapes.backbone_params:,} × {d} B)", shapes.backbone_params * d, dev, MOMENTS,
             FIX_PARTITION),
        Term("ID tables, 4 × fp32", 4 * shapes.table_elements, dev, MOMENTS, FIX_SHARD),
        Term(f"Adam m, v of {setup.trained_sets} trained table set(s), fp32", 8 * s * setup.trained_sets, dev,
             TRAINING, FIX_SHARD),
        Term("gradients of the table set a step trains, fp32", 4 * s, dev, TRAINING, FIX_SHARD),
        Term(f"trained backbone weights' gradient, Adam m, v ({trained:,} × 3 × {d} B)", 3 * trained * d, dev,
             TRAINING, FIX_PARTITION),
        Term("checkpoint copies on rank 0: tables, optimizer state, trained weights",
             4 * shapes.table_elements + 8 * s * setup.trained_sets + 3 * trained * d, HOST, (SAVE,), FIX_HOST),
    ]


def rows_terms(shapes: Shapes, setup: Setup) -> list[Term]:
    """Row-sharded tables (cluster.md, section 2.4): the backbone replicated, each table's rows split over
    the ranks with their Adam state, each rank writing its own rows to a checkpoint; whole tables only at a
    build that is whole (`incremental.init_from`)."""
    d, dev, r = setup.dtype_bytes, compute_memory(setup), setup.ranks
    shard = (math.ceil(shapes.users / r) + math.ceil(shapes.items / r)) * shapes.dim  # one set's rows on a rank
    whole = 4 * shapes.table_elements
    terms = [
        Term(f"backbone, whole on every rank ({shapes.backbone_params:,} × {d} B)", shapes.backbone_params * d, dev,
             MOMENTS, FIX_PARTITION),
        Term(f"ID table rows of this rank, 4 × fp32 ÷ {r}", 2 * shard * 4, dev, TRAINING, FIX_RANKS),
        *([Term("ID tables, whole, before they are sharded (every rank builds the whole model)", whole, dev, (BUILD,),
                FIX_ROWS_BUILD)] if setup.whole_build else []),
        Term(f"Adam m, v of {setup.trained_sets} trained table set(s), fp32 ÷ {r}", 8 * shard * setup.trained_sets,
             dev, TRAINING, FIX_RANKS),
        Term(f"gradients of the table set a step trains, fp32 ÷ {r}", 4 * shard, dev, TRAINING, FIX_RANKS),
        Term("checkpoint copies of this rank's rows and their optimizer state (each rank writes its own)",
             2 * shard * 4 + 8 * shard * setup.trained_sets, HOST, (SAVE,), FIX_RANKS),
    ]
    if setup.item_head:
        tokens = r * shapes.batch * shapes.seq_len  # every rank's hidden rows
        terms.append(Term(f"item head exchange: {tokens:,} hidden rows of all ranks and their gradients",
                          tokens * shapes.dim * d + tokens * (shapes.dim + 1) * 4, dev, (STEP,), FIX_ACTIVATIONS))
    return terms


def zero3_terms(shapes: Shapes, setup: Setup) -> list[Term]:
    """DeepSpeed ZeRO-3 (cluster.md, sections 1.1–1.5): every parameter partitioned, with fp32 masters,
    gradient partitions and Adam state of the trainable ones; every table gathered whole in a step."""
    d, g, r, dev = setup.dtype_bytes, setup.grad_bytes, setup.ranks, compute_memory(setup)
    params_memory = HOST if setup.offload_params else dev
    state_memory = HOST if setup.offload_optimizer else dev
    tables, p = shapes.table_elements, shapes.backbone_params
    trainable = tables + shapes.trained_backbone  # DeepSpeed keeps a master and a gradient partition for each
    adam = shapes.set_elements * setup.trained_sets + shapes.trained_backbone
    state_fix = FIX_RANKS if setup.offload_optimizer else FIX_OFFLOAD
    terms = [
        Term(f"backbone partition ({p:,} × {d} B ÷ {r})", math.ceil(p / r) * d, params_memory, MOMENTS, FIX_RANKS),
        Term(f"ID table partitions, 4 × {d} B ÷ {r}", math.ceil(tables / r) * d, params_memory,
             TRAINING if setup.whole_build else MOMENTS, FIX_RANKS),
        Term(f"fp32 master partitions of the tables and trained weights ÷ {r}", math.ceil(trainable / r) * 4,
             state_memory, TRAINING, state_fix),
        Term(f"gradient partitions, {g} B ÷ {r}", math.ceil(trainable / r) * g, state_memory, TRAINING, state_fix),
        Term(f"Adam m, v of {setup.trained_sets} trained table set(s) and trained weights, fp32 ÷ {r}",
             math.ceil(adam / r) * 8, state_memory, TRAINING, state_fix),
        Term("gathered backbone working set (≤ stage3_max_live_parameters)", min(p, setup.max_live) * d, dev,
             (BUILD, STEP), "a smaller stage3_max_live_parameters in the DeepSpeed config"),
        Term(f"gathered ID tables, all four, {d} B", tables * d, dev, (STEP,), FIX_GATHERED),
        Term("dense gradient of the largest trained table and its reduce-scatter copy", 2 * shapes.largest_table * g,
             dev, (STEP,), FIX_GATHERED),
        Term("whole fp32 tables and trained weights gathered for a checkpoint (every rank)",
             4 * (tables + shapes.trained_backbone), HOST, (SAVE,), FIX_HOST),
        Term("checkpoint copies on rank 0: tables, trained weights", 4 * (tables + shapes.trained_backbone), HOST,
             (SAVE,), FIX_HOST),
    ]
    if setup.offload_optimizer:
        terms.append(Term(f"CPU Adam's fp32 gradient partitions ÷ {r}", math.ceil(trainable / r) * 4, HOST,
                          TRAINING, FIX_RANKS))
    if setup.item_head and d < 4:
        terms.append(Term("item head's fp32 copies of the gathered item table and of its gradient",
                          2 * shapes.items * shapes.dim * 4, dev, (STEP,), FIX_GATHERED))
    if setup.whole_build:
        terms.append(Term("whole model before it is partitioned (every rank): backbone, fp32 tables"
                          + (" and their bf16 casts" if d < 4 else ""),
                          p * d + 4 * tables + (2 * tables if d < 4 else 0), dev, (BUILD,), FIX_WHOLE_BUILD))
    if setup.gpu:
        terms.append(Term("one whole table on the GPU while it is gathered, fp32", 4 * shapes.largest_table, DEVICE,
                          (SAVE,), FIX_GATHERED))
    return terms


def activation_bytes(shapes: Shapes, setup: Setup) -> int:
    """What the backbone keeps for backward on a rank (cluster.md, section 1.6): s·b·K·(34 + 5·a·s/K) bytes per
    layer at 16 bits (every layer; with checkpointing each layer's input, 2·s·b·K, and one layer's whole set),
    scaled to the backbone's dtype."""
    tokens = shapes.batch * shapes.seq_len
    layer = tokens * (34 * shapes.dim + 5 * shapes.heads * shapes.seq_len)
    at_16_bits = shapes.layers * 2 * tokens * shapes.dim + layer if setup.checkpointing else shapes.layers * layer
    return at_16_bits * setup.dtype_bytes // 2


def step_terms(shapes: Shapes, setup: Setup) -> list[Term]:
    """A step's working sets that every engine has: activations, the vocabulary head's logits and their
    gradient (`FusedVocabCrossEntropy` stores the whole [tokens, V] gradient), the item softmax's stored exps."""
    dev = compute_memory(setup)
    terms = [Term(f"backbone activations kept for backward ({shapes.batch} × {shapes.seq_len} tokens)",
                  activation_bytes(shapes, setup), dev, (STEP,), FIX_ACTIVATIONS)]
    if setup.vocab_head:
        tokens = shapes.batch * shapes.main_tokens
        terms.append(Term(f"vocabulary head: logits and their gradient ({tokens:,} tokens × {shapes.vocab:,} words)",
                          2 * tokens * shapes.vocab * setup.dtype_bytes, dev, (STEP,), FIX_ACTIVATIONS))
    if setup.item_head:
        rows = shapes.batch * shapes.seq_len * (setup.ranks if setup.engine == "rows" else 1)
        items = math.ceil(shapes.items / setup.ranks) if setup.engine == "rows" else shapes.items
        terms.append(Term("item softmax: stored exps of one row chunk (≤ 512 MiB)",
                          min(LOGIT_BLOCK_BYTES, rows * items * setup.dtype_bytes), dev, (STEP,)))
    return terms


def common_terms(shapes: Shapes, setup: Setup) -> list[Term]:
    """The backbone's host copy before it moves to a GPU, EASE on rank 0, the GPU allowance."""
    terms = []
    if setup.gpu and (setup.whole_build or setup.engine == "rows"):  # rows: every rank holds the whole backbone
        terms.append(Term("backbone loaded in host memory before it moves to the GPU",
                          shapes.backbone_params * setup.dtype_bytes, HOST, (BUILD,)))
    if setup.ease:
        terms.append(Term(f"EASE on rank 0: 4 × J² float64 (J = {shapes.items:,})", 32 * shapes.items**2, HOST,
                          (BASELINES,), FIX_EASE))
    if setup.gpu:
        terms.append(Term("allocator and NCCL buffers, fragmentation (allowance)", GPU_ALLOWANCE, DEVICE, MOMENTS))
    return terms


def gib(nbytes: float) -> str:
    """Bytes as GiB with three decimals: '1.250'."""
    return f"{nbytes / GIB:,.3f}"


def render(plan: MemoryPlan, available: dict[str, int | None], headroom: float = 1.0) -> str:
    """The plan as a table of terms (GiB, memory, moments), then each memory's totals per moment, its peak ×
    `headroom` and the memory `available` to a rank (None: not known)."""
    sh, su = plan.shapes, plan.setup
    lines = [f"per rank: engine {su.engine} × {su.ranks} rank(s) on {'GPU' if su.gpu else 'CPU'}, backbone "
             f"{sh.backbone_params:,} parameters × {su.dtype_bytes} B, {sh.users:,} users × {sh.items:,} items × "
             f"K = {sh.dim}, {sh.batch} documents × {sh.seq_len} tokens per rank and step",
             f"  {'term':<86} {'memory':<6} {'GiB':>10}  alive at"]
    for term in plan.terms:
        lines.append(f"  {term.name:<86} {term.memory:<6} {gib(term.nbytes):>10}  {', '.join(term.moments)}")
    for memory in plan.memories():
        totals = ", ".join(f"{m} {gib(plan.total(memory, m))}" for m in MOMENTS)
        need, moment = plan.peak(memory)
        have = available.get(memory)
        verdict = "unknown" if have is None else "fits" if need * headroom <= have else "DOES NOT FIT"
        lines.append(f"  {memory} totals (GiB): {totals}")
        lines.append(f"  {memory} peak: {gib(need)} GiB at {moment}"
                     + (f" × headroom {headroom:g} = {gib(need * headroom)} GiB" if headroom != 1 else "")
                     + f", available {'unknown' if have is None else gib(have) + ' GiB'} per rank: {verdict}")
    return "\n".join(lines)


def shortfalls(plan: MemoryPlan, available: dict[str, int | None], headroom: float = 1.0) -> list[str]:
    """The memories whose peak × `headroom` exceeds what is `available` to a rank (unknown ones pass)."""
    return [m for m in plan.memories()
            if available.get(m) is not None and plan.peak(m)[0] * headroom > available[m]]
