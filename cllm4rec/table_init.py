"""The starting values of the four ID tables, written whole or one flat element range at a time (one rank's
ZeRO-3 partition or rows): the same values either way, without holding more than the range.

The tables are drawn from one CPU generator seeded with the run seed, table after table in draw order
(`TableInit.draws`), each as `torch.randn(rows, K) * std`; a table that starts from another (content
tables with content_init "collab") copies its values. A range is written by replaying the generator
through the tables before it and through its own table, `CHUNK` elements at a time, keeping only the
range: PyTorch's CPU normal sampler draws one uniform per element and transforms blocks of 16, so a
draw cut into pieces of a multiple of 16 elements, the last piece holding at least 16, gives the same
bits as one draw of the whole (tests/test_zero_build.py checks the tables against whole draws). Every
piece is drawn into one buffer per `write`: a fresh 4 MiB tensor per piece left glibc's heap holding
up to 16 MiB of freed pieces per table (benchmarks/build_rss.py).

With `model.content_init_from_text` a content row whose entity has text starts instead at the mean of its
text's word embeddings (`TextRows`); a range computes only the means of the rows it overlaps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cllm4rec.zero_params import full_shape, gathered

CHUNK = 1 << 20  # elements per replayed draw, a multiple of 16 (4 MiB of fp32)


def draw_into(generator: torch.Generator, numel: int, start: int, out: torch.Tensor, std: float,
              buffer: torch.Tensor) -> None:
    """Draw `numel` standard normals from `generator` in chunks into `buffer` (float32, at least
    min(numel, CHUNK + 15) elements) and write elements [start, start + out.numel()) of them, times
    `std`, into the flat `out` (any dtype); the generator ends where one draw of `numel` would leave it."""
    end, drawn = start + out.numel(), 0
    while drawn < numel:
        take = numel - drawn if numel - drawn <= CHUNK + 15 else CHUNK
        chunk = buffer[:take].normal_(generator=generator)
        lo, hi = max(start, drawn), min(end, drawn + take)
        if lo < hi:
            out[lo - start:hi - start].copy_(chunk[lo - drawn:hi - drawn].mul_(std))
        drawn += take


def mean_word_embedding(words: nn.Embedding, ids: list[int]) -> torch.Tensor:
    """float32 [K]: the mean of the word-embedding rows of the (non-empty) token ids `ids`. The rows are
    indexed in the weight, not looked up through the module: a ZeRO-3 engine's module hooks stay out of it."""
    index = torch.as_tensor(list(ids), dtype=torch.long, device=words.weight.device)
    return words.weight[index].float().mean(dim=0)


def word_embedding_stats(words: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
    """(w̄ float32 [K], ‖w‖ float32 []): the backbone's mean word embedding and its mean word norm, over
    every row of `words`. Collective with a ZeRO-3 backbone (the embedding is gathered)."""
    with gathered([words.weight]):
        weight = words.weight.detach().float()
        return weight.mean(dim=0), weight.norm(dim=1).mean()


def token_like_rows(rows: torch.Tensor, words: nn.Embedding, alpha: float,
                    center: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [N, K]: `rows` [N, K] moved to where the backbone's tokens lie. Each becomes the mean word
    embedding w̄ plus α × the mean word norm ‖w‖ × its unit direction u from the rows' mean (`center` [K],
    default the mean of `rows`: pass the whole table's when `rows` are a part of it), rescaled to ‖w‖:
    (w̄ + α‖w‖·u) / ‖w̄ + α‖w‖·u‖ × ‖w‖. Rows that differ only in a small part around a large common
    one (means of word embeddings) keep what tells them apart, in a vector the size and shape of a word's;
    rows equal to their mean become w̄ rescaled. Collective with a ZeRO-3 backbone (its word embeddings
    are gathered)."""
    mean_word, word_norm = word_embedding_stats(words)
    rows = rows.detach().float()
    center = rows.mean(dim=0) if center is None else center.float()
    direction = torch.nn.functional.normalize(rows - center, dim=1)
    return torch.nn.functional.normalize(mean_word + alpha * word_norm * direction, dim=1) * word_norm


@dataclass(frozen=True)
class TextRows:
    """Content rows that start at the mean word embedding of their entity's text instead of their draw:
    `ids` maps each content table to its rows with text (those this rank holds) and their word ids; `words`
    is the backbone's input embedding, gathered for each write of a content table if it is a ZeRO-3
    partition (collective then: every rank writes the same tables together)."""

    ids: dict[str, dict[int, list[int]]]
    words: nn.Embedding

    def write(self, name: str, start: int, out: torch.Tensor) -> None:
        """Overwrite the elements [start, start + out.numel()) of table `name` (flattened row-major) that
        belong to rows with text, in the flat `out`; each of those rows' means is computed once."""
        rows = self.ids.get(name)
        if rows is None:
            return
        dim = int(full_shape(self.words.weight)[1])
        end = start + out.numel()
        with gathered([self.words.weight]):
            for row, ids in rows.items():
                lo, hi = max(start, row * dim), min(end, (row + 1) * dim)
                if lo < hi:
                    out[lo - start:hi - start].copy_(mean_word_embedding(self.words, ids)[lo - row * dim:hi - row * dim])


@dataclass(frozen=True)
class TableInit:
    """How the tables start: N(0, std²) draws from `seed`, in the order of `draws` ((table, elements)
    pairs); `sources` maps a table that copies another to the drawn one; `text`, content rows that start
    from their text instead (`CLLM4Rec.init_content_from_text` sets it)."""

    seed: int
    std: float
    draws: tuple[tuple[str, int], ...]
    sources: dict[str, str]
    text: TextRows | None = None

    def write(self, name: str, start: int, out: torch.Tensor) -> None:
        """Write elements [start, start + out.numel()) of table `name`, flattened row-major, into the flat
        `out` [count]; every rank may call it for its own range (collective-free, except for content
        tables with `text` over a ZeRO-3 backbone: `TextRows`)."""
        drawn = self.sources.get(name, name)
        if drawn not in dict(self.draws):
            raise KeyError(f"{name}: no table of that name is drawn")
        generator = torch.Generator().manual_seed(self.seed)
        empty = out[:0]
        buffer = torch.empty(min(CHUNK + 15, max(numel for _, numel in self.draws)), dtype=torch.float32)
        for table, numel in self.draws:
            draw_into(generator, numel, start, out if table == drawn else empty, self.std, buffer)
            if table == drawn:
                break
        if self.text is not None:
            self.text.write(name, start, out)

    def whole(self, name: str, rows: int, dim: int) -> torch.Tensor:
        """float32 [rows, dim]: all of table `name`."""
        table = torch.empty(rows * dim, dtype=torch.float32)
        self.write(name, 0, table)
        return table.view(rows, dim)
