"""Item-list manipulation for documents: stochastic reordering and masked prompting
(docs/method.md §5.2, §9.1).

All randomness comes from a caller-owned `np.random.Generator`, so a seed fixes every document.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cllm4rec.templates import cap_items

MaskMode = Literal["fixed", "bernoulli", "uniform"]
TargetMode = Literal["all", "dropped"]


def order_items(items: np.ndarray, rng: np.random.Generator, shuffle: bool) -> np.ndarray:
    """The user's items for one collaborative document: a fresh random order, or as given
    (chronological, the caller's order) when `shuffle` is False (LLM-FixOrd)."""
    items = np.asarray(items, dtype=np.int64)
    return items[rng.permutation(items.shape[0])] if shuffle else items


@dataclass(frozen=True)
class MaskedPrompt:
    """A finetuning example: `prompt_items` go into the prompt (shuffled), `target_items` are the
    multi-hot target (sorted)."""

    prompt_items: np.ndarray
    target_items: np.ndarray


def masked_prompt(
    items: np.ndarray,
    rng: np.random.Generator,
    *,
    mode: MaskMode = "fixed",
    ratio: float = 0.2,
    target: TargetMode = "all",
    max_items: int | None = None,
) -> MaskedPrompt:
    """Drop some training items from the prompt, shuffle the rest (docs/method.md §9.1).

    mode "fixed": drop exactly max(1, ⌊ratio·n⌋) items (the authors' code); "bernoulli": drop each
    item with probability `ratio` (the paper's wording); "uniform": keep a number of items drawn
    uniformly from 1 to what "fixed" keeps, so that the model also sees prompts as short as a new user's.
    target "all": every training item (authors' code); "dropped": only the dropped ones. An over-long
    prompt drops further random items.
    """
    items = np.asarray(items, dtype=np.int64)
    n = items.shape[0]
    if mode in ("fixed", "uniform"):
        fixed_drop = min(n, max(1, int(np.floor(ratio * n))))
        size = n - int(rng.integers(1, n - fixed_drop + 1)) if mode == "uniform" and n > fixed_drop else fixed_drop
        drop = np.zeros(n, dtype=bool)
        drop[rng.choice(n, size=size, replace=False)] = True
    elif mode == "bernoulli":
        drop = rng.random(n) < ratio
    else:
        raise ValueError(f"unknown mask mode {mode!r}; expected 'fixed', 'bernoulli' or 'uniform'")
    kept = items[~drop]
    kept = kept[rng.permutation(kept.shape[0])]
    if max_items is not None:
        kept = np.asarray(cap_items(kept, max_items, rng), dtype=np.int64)
    if target == "all":
        targets = np.sort(items)
    elif target == "dropped":
        targets = np.sort(items[drop])
    else:
        raise ValueError(f"unknown target mode {target!r}; expected 'all' or 'dropped'")
    return MaskedPrompt(prompt_items=kept, target_items=targets)
