"""The model's vocabulary (docs/architecture.md, "Glossary"): the two ID table sets, and the tasks one
forward pass of `CLLM4Rec` computes, with the count each task's LM loss is a mean over."""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the names import without torch (data_prep reads them)
    import torch


class Name(str, Enum):
    """A closed set of names. A member is its string value wherever it is written — metric and file
    names, checkpoints, seeds — so `f"{Task.RECOMMEND}_lm_loss"` is "rec_lm_loss"."""

    def __str__(self) -> str:
        return self.value


class TableSet(Name):
    """A pair of ID tables: the collaborative Z^l (collab_user [N, K], collab_item [J, K]) or the content
    Z^c (content_user, content_item). Each is also one optimizer parameter group, named by its value."""

    COLLAB = "collab"
    CONTENT = "content"

    @property
    def other(self) -> TableSet:
        """The set this one's MR term pulls toward (detached)."""
        return TableSet.CONTENT if self is TableSet.COLLAB else TableSet.COLLAB

    @property
    def table_names(self) -> tuple[str, str]:
        """(user table, item table) attribute names, e.g. ("collab_user", "collab_item")."""
        return f"{self.value}_user", f"{self.value}_item"


class Task(Name):
    """What one forward pass computes (`CLLM4Rec.forward`); the value prefixes the task's metrics.

    COLLAB_LM   the collaborative LLM: item-space next-token loss over interaction documents, head
                tied to Z^{l,v}; embeds with and trains the collaborative tables (L-step).
    CONTENT_LM  the content LLM: vocabulary next-token loss over biographies, item texts and reviews,
                through the backbone's own output head; the content tables (warm-up, C-step).
    RECOMMEND   finetuning: the multinomial likelihood of each prompt's multi-hot target under the
                item logits of its last position; the collaborative tables.
    SCORE       the item logits [B, J] of each prompt's last position, no loss (evaluation, serving).
    """

    COLLAB_LM = "collab"
    CONTENT_LM = "content"
    RECOMMEND = "rec"
    SCORE = "score"

    @property
    def table_set(self) -> TableSet:
        """The tables whose rows embed the batch's ID tokens (and that the task's loss trains)."""
        return TableSet.CONTENT if self is Task.CONTENT_LM else TableSet.COLLAB

    def lm_count(self, lengths: torch.Tensor, n_prompt: torch.Tensor) -> float:
        """What the task's LM sum is a mean over, for right-padded documents of `lengths` [B] real tokens
        and `n_prompt` [B] prompt tokens: the main-part tokens, or for RECOMMEND the prompts (users).
        The one place the loss denominator is counted: the model's own mean and, summed over the
        ranks, the global batch's (trainer/engine.py)."""
        if self is Task.RECOMMEND:
            return float(lengths.shape[0])
        return float((lengths - n_prompt).sum())
