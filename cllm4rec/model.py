"""CLLM4Rec: one frozen causal-LM backbone, four ID tables and the heads tied to them
(docs/method.md §3, §5–§7, §9–§10).

Token ids follow `cllm4rec.tokenization`: words 0..V-1, user i = V+i, item j = V+N+j. One module
holds everything, and `forward(task, ...)` is its one entry point (a DeepSpeed engine gathers the
partitioned parameters in the module's forward hooks). The task (`cllm4rec.tasks.Task`) picks the
table set whose rows embed the ID tokens and the method that scores the hidden states:

  COLLAB_LM   `collab_lm_sum`: item-space next-token loss, head tied to Z^{l,v}; MR toward the content
              tables, prior λ_l. Gradients reach the collaborative tables.
  CONTENT_LM  `content_lm_sum`: vocabulary next-token loss through the backbone's own (frozen) output
              head; MR toward the collaborative tables. Gradients reach the content tables.
  RECOMMEND   `recommendation_nll_sum`: multinomial likelihood of the last prompt position's item
              logits (head tied to Z^{l,v}); MR toward the content tables.
  SCORE       `last_position_item_logits`: item logits [B, J] of the last prompt position (no loss).

How the forward reaches the tables is the caller's `tables` argument (cllm4rec/table_access.py): whole
tables whose gradients go to autograd (`.grad`, the default) or into a `TableGradients`' kept buffers
that the caller applies after backward, or row-sharded tables (cllm4rec/sharded_tables.py). Nothing
else outside the arguments changes what a forward does.

Batches are right-padded: input_ids / attention_mask [B, T], lengths [B] (real tokens), n_prompt [B]
(prompt tokens incl. BOS; the LM loss covers positions n_prompt..length-1 only).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from cllm4rec.losses import squared_distance_sum, squared_norm_sum, vocab_cross_entropy_sum
from cllm4rec.table_access import LOCAL_TABLES, TableAccess
from cllm4rec.table_init import TableInit, TextRows
from cllm4rec.tasks import TableSet, Task
from cllm4rec.zero_params import full_shape, gathered, held_elements

TABLE_NAMES = (*TableSet.COLLAB.table_names, *TableSet.CONTENT.table_names)


class TableRows(NamedTuple):
    """The rows of one ID table a batch uses, gathered once: one gradient scatter per table per step
    feeds the embeddings, the MR term and the prior alike."""

    index: torch.Tensor  # [U] distinct rows
    inverse: torch.Tensor  # [R] each occurrence's position in index
    counts: torch.Tensor  # [U] occurrences of each row
    vectors: torch.Tensor  # [U, K] fp32, differentiable

    @classmethod
    def gather(cls, table: torch.Tensor, rows: torch.Tensor, tables: TableAccess = LOCAL_TABLES) -> "TableRows":
        """`tables`: how the rows are read and where their gradient goes (table_access.py)."""
        index, inverse, counts = torch.unique(rows, return_inverse=True, return_counts=True)
        return cls(index, inverse, counts, tables.rows(table, index))


class IdRows(NamedTuple):
    """Where a batch's ID tokens are (flat positions into [B*T]) and their gathered table rows."""

    user_positions: torch.Tensor
    users: TableRows
    item_positions: torch.Tensor
    items: TableRows


def decoder_of(backbone: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of a causal LM, also when wrapped by a PEFT adapter."""
    inner = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return inner.base_model


TableMaker = Callable[[TableInit, str, int, int, torch.device], nn.Parameter]


def whole_table(init: TableInit, name: str, rows: int, dim: int, device: torch.device) -> nn.Parameter:
    """Table `name` [rows, dim], fp32, whole on `device`."""
    return nn.Parameter(init.whole(name, rows, dim).to(device))


def table_init_of(words: torch.Tensor, n_users: int, n_items: int, init_std: float | None, seed: int,
                  content_init: str) -> TableInit:
    """The tables' starting values: σ = `init_std` or the std of the word embeddings `words` [V, K] (gathered
    for a moment if partitioned: collective); content tables copy the collaborative ones ("collab") or are
    drawn after them ("random")."""
    if content_init not in ("collab", "random"):
        raise ValueError(f"content_init must be 'collab' or 'random', got {content_init!r}")
    if init_std is None:
        with gathered([words]):
            init_std = float(words.detach().float().std())
    dim = int(full_shape(words)[1])
    sizes = {name: (n_users if name.endswith("user") else n_items) * dim for name in TABLE_NAMES}
    collab = content_init == "collab"
    sources = {name: name.replace("content", "collab") for name in TABLE_NAMES if collab and name.startswith("content")}
    draws = tuple((name, sizes[name]) for name in TABLE_NAMES if name not in sources)
    return TableInit(seed, float(init_std), draws, sources)


class CLLM4Rec(nn.Module):
    """Backbone + collaborative and content ID tables [N, K] / [J, K] (fp32) + tied heads.

    Tables are drawn from N(0, σ²), σ = `init_std` or the std of the backbone's word embeddings.
    content_init "collab" (default) starts the content tables AT the collaborative ones — the mean of
    their conditional prior N(z^l, λ_c⁻¹I), so the MR term starts at 0 instead of at ~2Kσ² per ID,
    which would otherwise dominate the LM losses for hundreds of epochs; "random" draws them
    independently. `head_gradient_dtype` is the dtype of the item head's gradient products (None: fp32,
    exact; bf16 with a bf16 backbone: see `item_softmax_nll_sum`). `make_table` creates each table
    Parameter from its `TableInit` (default `whole_table`: the whole table on the backbone's device;
    trainer/zero_build.py: a ZeRO-3 partition written in place; `row_shards.RowSlices`: one rank's rows).
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_users: int,
        n_items: int,
        *,
        init_std: float | None = None,
        seed: int = 0,
        lambda_c: float = 1.0,
        lambda_l: float = 0.0,
        backbone_trainable: bool = False,
        backbone_dropout: bool = False,
        content_init: str = "collab",
        head_gradient_dtype: torch.dtype | None = None,
        make_table: TableMaker = whole_table,
    ):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder_of(backbone)
        words = backbone.get_input_embeddings().weight
        self.vocab_rows, self.dim = (int(n) for n in full_shape(words))
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.lambda_c, self.lambda_l = float(lambda_c), float(lambda_l)
        self.backbone_trainable, self.backbone_dropout = backbone_trainable, backbone_dropout
        self.head_gradient_dtype = head_gradient_dtype
        self.table_init = table_init_of(words, self.n_users, self.n_items, init_std, seed, content_init)
        for name in TABLE_NAMES:
            setattr(self, name, make_table(self.table_init, name, self.table_rows(name), self.dim, words.device))
        if not backbone_trainable:
            for p in backbone.parameters():
                p.requires_grad_(False)
        self.compiled_decoder: Callable[..., Any] | None = None  # set by `compile_backbone`
        self.checkpointed_layers: list[nn.Module] = []  # set by `enable_activation_checkpointing`
        self.train(False)

    def enable_activation_checkpointing(self) -> None:
        """Keep only each decoder layer's input for the backward pass and recompute the layer there
        (transformers' gradient checkpointing, non-reentrant): activation memory falls from all
        layers' intermediates to one layer's, for one more forward pass of the backbone. The layers
        are flagged as training (transformers checkpoints only then); their submodules keep the
        backbone's mode, so dropout stays as configured."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        inner = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.checkpointed_layers = [m for m in inner.modules()
                                    if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
        if not self.checkpointed_layers:
            raise ValueError(f"{type(inner).__name__} has no layers that support gradient checkpointing")
        self.train(self.training)

    def compile_backbone(self) -> None:
        """Run the backbone body through `torch.compile` (inductor, dynamic shapes): its elementwise
        ops fuse into generated kernels. The first batches compile (minutes on a CPU; cached on disk
        for later processes). The compiled callable is kept out of the module tree (a partial, not a
        submodule), so parameters, state_dict and checkpoints hold the eager weights once."""
        self.compiled_decoder = functools.partial(torch.compile(self.decoder, dynamic=True))

    # ---- bookkeeping -----------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "CLLM4Rec":
        """Tables follow `mode`; the backbone stays in eval mode (no dropout) unless dropout is on."""
        super().train(mode)
        self.backbone.train(mode and self.backbone_dropout)
        for layer in self.checkpointed_layers:
            layer.training = mode
        return self

    def table_rows(self, name: str) -> int:
        """Rows of the whole table `name`: N for the user tables, J for the item tables."""
        return self.n_users if name.endswith("user") else self.n_items

    def tables(self, which: TableSet) -> tuple[nn.Parameter, nn.Parameter]:
        """(user table, item table) of a table set."""
        user, item = which.table_names
        return getattr(self, user), getattr(self, item)

    def table_parameters(self, which: TableSet) -> list[nn.Parameter]:
        return list(self.tables(which))

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone weights (all of them for FtAll, adapter weights for LoRA, else none)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def id_tables(self) -> dict[str, torch.Tensor]:
        """The four tables by name, detached (for saving as safetensors)."""
        return {name: getattr(self, name).detach() for name in TABLE_NAMES}

    @torch.no_grad()
    def init_content_from_text(self, text_ids: dict[tuple[str, int], list[int]]) -> None:
        """Set content rows to the mean word embedding of the entity's text (the authors' suggested
        option, `model.content_init_from_text`) in the part of each content table this rank holds
        (`held_elements`: all of a whole table, a rank's rows, a ZeRO-3 partition's): each rank computes
        only those rows' means. `table_init` then includes them (`TableInit.text`: a bf16 ZeRO-3 engine
        writes its fp32 masters from it). Collective with a ZeRO-3 backbone (its word embeddings are gathered).

        text_ids: ("user", i) or ("item", j) → word ids of that entity's biography / content text.
        """
        if not text_ids:
            return
        held = {name: held_elements(getattr(self, name)) for name in TableSet.CONTENT.table_names}
        ids: dict[str, dict[int, list[int]]] = {name: {} for name in held}
        for (kind, index), words in text_ids.items():
            start, values = held[f"content_{kind}"]
            if words and start < (index + 1) * self.dim and index * self.dim < start + values.numel():
                ids[f"content_{kind}"][index] = words
        text = TextRows(ids, self.backbone.get_input_embeddings())
        self.table_init = dataclasses.replace(self.table_init, text=text)
        for name, (start, values) in held.items():
            text.write(name, start, values)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    # ---- forward pieces --------------------------------------------------------------------------

    def id_occurrences(self, ids: torch.Tensor) -> int:
        """Number of user and item tokens in ids [B, T] (every occurrence; the MR term's terms)."""
        return int((ids >= self.vocab_rows).sum())

    def _id_positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat positions and indices of user and item tokens in ids [B, T]: (upos, users, ipos, items)."""
        flat = ids.reshape(-1)
        upos = ((flat >= self.vocab_rows) & (flat < self.vocab_rows + self.n_users)).nonzero(as_tuple=True)[0]
        ipos = (flat >= self.vocab_rows + self.n_users).nonzero(as_tuple=True)[0]
        return upos, flat[upos] - self.vocab_rows, ipos, flat[ipos] - self.vocab_rows - self.n_users

    def id_rows(self, ids: torch.Tensor, which: TableSet, tables: TableAccess = LOCAL_TABLES) -> IdRows:
        """The ID tokens of ids [B, T] and their rows of table set `which`, read through `tables`
        (module docstring)."""
        upos, users, ipos, items = self._id_positions(ids)
        user_table, item_table = self.tables(which)
        return IdRows(upos, TableRows.gather(user_table, users, tables), ipos, TableRows.gather(item_table, items, tables))

    def embed(self, ids: torch.Tensor, which: TableSet, rows: IdRows | None = None) -> torch.Tensor:
        """Input embeddings [B, T, K] in the backbone dtype: words from the frozen vocabulary table,
        IDs from table set `which` (composed in fp32, then cast; tables may be bf16 under DeepSpeed)."""
        rows = self.id_rows(ids, which) if rows is None else rows
        words = self.backbone.get_input_embeddings()(torch.where(ids < self.vocab_rows, ids, 0))
        flat = words.reshape(-1, self.dim).float()
        flat = flat.index_put((rows.user_positions,), rows.users.vectors[rows.users.inverse])
        flat = flat.index_put((rows.item_positions,), rows.items.vectors[rows.items.inverse])
        return flat.view(*ids.shape, self.dim).to(self.compute_dtype)

    def hidden_states(self, ids: torch.Tensor, attention_mask: torch.Tensor, which: TableSet,
                      rows: IdRows | None = None) -> torch.Tensor:
        """Last-layer hidden states [B, T, K] of the backbone over the extended embeddings."""
        decoder = self.decoder if self.compiled_decoder is None else self.compiled_decoder
        out = decoder(inputs_embeds=self.embed(ids, which, rows), attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    @staticmethod
    def main_part(n_prompt: torch.Tensor, lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Mask [B, T-1] of the positions whose NEXT token is in the main part (the LM loss positions)."""
        pos = torch.arange(seq_len - 1, device=n_prompt.device)
        return (pos >= (n_prompt[:, None] - 1)) & (pos < (lengths[:, None] - 1))

    def regulariser_sums(self, ids: torch.Tensor, which: TableSet, rows: IdRows | None = None,
                         tables: TableAccess = LOCAL_TABLES) -> tuple[torch.Tensor, torch.Tensor]:
        """(MR sum, prior sum) over every ID occurrence in ids: Σ||z − ẑ_other||², Σ||z||² (the
        prior only for the collaborative set); the other set's rows read through `tables`."""
        rows = self.id_rows(ids, which, tables) if rows is None else rows
        other_user, other_item = self.tables(which.other)
        users, items = rows.users, rows.items
        mr = (squared_distance_sum(users.vectors, tables.anchors(other_user, users.index), users.counts)
              + squared_distance_sum(items.vectors, tables.anchors(other_item, items.index), items.counts))
        if which is TableSet.CONTENT:  # content tables have only the conditional prior N(z^l, λ_c⁻¹I)
            return mr, mr.new_zeros(())
        prior = squared_norm_sum(users.vectors, users.counts) + squared_norm_sum(items.vectors, items.counts)
        return mr, prior

    @staticmethod
    def last_position(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, K] at each row's last real position."""
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]

    def last_position_item_logits(self, hidden: torch.Tensor, lengths: torch.Tensor,
                                  tables: TableAccess = LOCAL_TABLES) -> Any:
        """Item logits [B, J] (fp32) from the hidden state at each row's last real position (with
        row-sharded `tables`, their `ShardScores`)."""
        return tables.item_logits(self.last_position(hidden, lengths), self.collab_item)

    # ---- the tasks' LM sums over hidden [B, T, K] of input_ids [B, T]: each (scalar sum, number of targets)

    def main_part_targets(self, hidden: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor,
                          n_prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [M, K] at the main-part positions, their next tokens [M])."""
        mask = self.main_part(n_prompt, lengths, input_ids.shape[1])
        return hidden[:, :-1][mask], input_ids[:, 1:][mask]

    def collab_lm_sum(self, hidden: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor,
                      n_prompt: torch.Tensor, tables: TableAccess = LOCAL_TABLES) -> tuple[torch.Tensor, int]:
        """Task COLLAB_LM: Σ over main-part tokens of −log softmax over the J items of (hidden @ Z^{l,v}ᵀ)
        at the item token that follows (the softmax covers items only)."""
        selected, targets = self.main_part_targets(hidden, input_ids, lengths, n_prompt)
        positions = torch.arange(targets.shape[0], device=targets.device)
        lm_sum = tables.item_nll_sum(selected, self.collab_item, positions, targets - self.vocab_rows - self.n_users,
                                     self.head_gradient_dtype)
        return lm_sum, targets.shape[0]

    def content_lm_sum(self, hidden: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor,
                       n_prompt: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Task CONTENT_LM: Σ over main-part tokens of the cross-entropy of the backbone's vocabulary
        logits against the word that follows."""
        selected, targets = self.main_part_targets(hidden, input_ids, lengths, n_prompt)
        return vocab_cross_entropy_sum(self.backbone.get_output_embeddings()(selected), targets), targets.shape[0]

    def recommendation_nll_sum(self, hidden: torch.Tensor, lengths: torch.Tensor, target_rows: torch.Tensor,
                               target_items: torch.Tensor, tables: TableAccess = LOCAL_TABLES
                               ) -> tuple[torch.Tensor, int]:
        """Task RECOMMEND: Σ over the multi-hot targets (COO: target_rows [P], target_items [P]) of −log
        softmax over the J items of each prompt's last-position logits (a user's c targets weigh its
        log-sum-exp c times)."""
        lm_sum = tables.item_nll_sum(self.last_position(hidden, lengths), self.collab_item, target_rows, target_items,
                                     self.head_gradient_dtype)
        return lm_sum, target_items.shape[0]

    # ---- the one entry point ---------------------------------------------------------------------

    def forward(
        self,
        task: Task,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lengths: torch.Tensor,
        n_prompt: torch.Tensor | None = None,
        target_rows: torch.Tensor | None = None,
        target_items: torch.Tensor | None = None,
        *,
        tables: TableAccess = LOCAL_TABLES,
        lm_denominator: float | None = None,
        mr_weight: float | None = None,
        prior_weight: float | None = None,
    ) -> dict[str, Any]:
        """Run `task` on a batch (module docstring); SCORE returns {"logits": [B, J]} (with row-sharded
        `tables`, their `ShardScores`), the others loss parts.

        Keys: "loss" = lm_sum / lm_denominator + mr_loss + prior_loss with mr_loss = mr_weight·mr_sum
        and prior_loss = prior_weight·prior_sum, and "lm_sum", "lm_count" (`Task.lm_count`: main-part
        tokens, or users for RECOMMEND), "target_count" (main-part tokens, or multi-hot target entries
        for RECOMMEND: lm_sum per target compares with the entropy of item popularity), "mr_sum",
        "prior_sum". lm_denominator defaults to lm_count; a distributed caller passes the global count.
        mr_weight / prior_weight default to λ_c / λ_l (the authors' sum reduction); a caller that reduces
        by the mean passes λ / (ID occurrences in the global batch). tables: how the forward reaches the
        ID tables and where their gradients go (module docstring).
        """
        which = task.table_set
        rows = self.id_rows(input_ids, which, tables)
        hidden = self.hidden_states(input_ids, attention_mask, which, rows)
        if task is Task.SCORE:
            return {"logits": self.last_position_item_logits(hidden, lengths, tables)}
        if task is Task.RECOMMEND:
            lm_sum, targets = self.recommendation_nll_sum(hidden, lengths, target_rows, target_items, tables)
        elif task is Task.COLLAB_LM:
            lm_sum, targets = self.collab_lm_sum(hidden, input_ids, lengths, n_prompt, tables)
        else:
            lm_sum, targets = self.content_lm_sum(hidden, input_ids, lengths, n_prompt)
        lm_count = torch.tensor(task.lm_count(lengths, n_prompt))
        target_count = torch.tensor(float(targets))
        mr_sum, prior_sum = self.regulariser_sums(input_ids, which, rows, tables)
        denominator = lm_count.clamp(min=1.0) if lm_denominator is None else lm_denominator
        mr_loss = (self.lambda_c if mr_weight is None else mr_weight) * mr_sum
        prior_loss = (self.lambda_l if prior_weight is None else prior_weight) * prior_sum
        loss = lm_sum / denominator + mr_loss + prior_loss
        return {"loss": loss, "lm_sum": lm_sum.detach(), "lm_count": lm_count, "target_count": target_count,
                "mr_sum": mr_sum.detach(), "prior_sum": prior_sum.detach(),
                "mr_loss": mr_loss.detach(), "prior_loss": prior_loss.detach()}
