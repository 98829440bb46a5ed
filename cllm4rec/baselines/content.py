"""Cold-start baselines (docs/fold_in.md, section 5): ranking items no one has interacted with yet.

Random scores; and the content baseline a practitioner reaches for first: a user's profile is the mean
of their history items' text vectors (and, where users wrote reviews, of those too), and every item is
scored by the cosine between its text vector and that profile. The text vectors are TF-IDF
(scikit-learn's `TfidfVectorizer`, fitted on the item texts) or the mean of a backbone's input word
embeddings over the item's tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from cllm4rec.interactions import UserItems
from cllm4rec.table_init import mean_word_embedding

Vectors = np.ndarray | sp.csr_matrix
"""[J, D] item text vectors, rows L2-normalised (zero for an item without text)."""


def random_scores(rows: np.ndarray, n_items: int, seed: int) -> torch.Tensor:
    """Scores float32 [len(rows), n_items] uniform in [0, 1), each row drawn from (seed, user): the same
    user gets the same scores whatever the batch."""
    return torch.from_numpy(np.stack([np.random.default_rng([seed, int(u)]).random(n_items, dtype=np.float32)
                                      for u in rows]) if len(rows) else np.zeros((0, n_items), np.float32))


def tfidf_vectors(texts: Sequence[str], others: Sequence[str] = ()) -> sp.csr_matrix:
    """TF-IDF [J, V] of the texts (scikit-learn's defaults: lowercase words of 2+ characters, smoothed idf,
    rows L2-normalised); V is the vocabulary of the texts themselves. With `others`, the rows [len(others), V]
    of those texts under the same vocabulary and idf instead."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not any(t.strip() for t in texts):
        raise ValueError("TF-IDF needs at least one non-empty text")
    fitted = TfidfVectorizer().fit(texts)
    return fitted.transform(others if others else texts).tocsr()


def authored_vectors(vectors: sp.csr_matrix, authors: np.ndarray, n_users: int) -> sp.csr_matrix:
    """[n_users, V]: per user, the sum of the rows of `vectors` [R, V] (texts they wrote, e.g. reviews;
    `authors` [R] their user indices); a zero row for a user who wrote none."""
    picks = sp.csr_matrix((np.ones(len(authors), np.float32), (authors, np.arange(len(authors)))),
                          shape=(n_users, vectors.shape[0]))
    return sp.csr_matrix(picks @ vectors)


def tfidf_lsa(texts: Sequence[str], dim: int, seed: int) -> np.ndarray:
    """float32 [len(texts), c]: the texts' TF-IDF vectors (`tfidf_vectors`) projected on their c = min(dim,
    V − 1, len(texts) − 1) leading singular directions (latent semantic analysis: scikit-learn's randomized
    `TruncatedSVD`, seeded); the vectors themselves, dense, when V < 2."""
    from sklearn.decomposition import TruncatedSVD

    vectors = tfidf_vectors(texts)
    components = min(dim, vectors.shape[1] - 1, vectors.shape[0] - 1)
    if components < 1:
        return vectors.toarray().astype(np.float32)
    return TruncatedSVD(components, random_state=seed).fit_transform(vectors).astype(np.float32)


@torch.no_grad()
def mean_word_vectors(token_ids: Sequence[Sequence[int]], embeddings: torch.nn.Embedding) -> np.ndarray:
    """float32 [J, K]: per text, the mean of `embeddings`' rows over its token ids, L2-normalised (zeros
    for a text without tokens)."""
    weight = embeddings.weight
    rows = [mean_word_embedding(embeddings, ids) if len(ids) else weight.new_zeros(weight.shape[1], dtype=torch.float32)
            for ids in token_ids]
    vectors = torch.stack(rows).cpu().numpy() if rows else np.zeros((0, weight.shape[1]), np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def profile_scores(vectors: Vectors, history: UserItems, rows: np.ndarray,
                   authored: sp.csr_matrix | None = None) -> torch.Tensor:
    """Cosine float32 [len(rows), J] between each user's profile (the mean of their history items' vectors,
    `history` row `rows[b]`, and with `authored` [N, D] (`authored_vectors`) of the texts they wrote) and every
    item's vector; 0 for a user without history or an item without text."""
    picked = history.subset(rows)
    users = sp.csr_matrix((np.ones(picked.nnz, np.float32), picked.indices, picked.indptr),
                          shape=(len(rows), history.n_items))
    profiles = sp.csr_matrix(users @ vectors)  # [B, D]; the sum points where the mean does
    if authored is not None:
        profiles = sp.csr_matrix(profiles + authored[rows])
    norms = np.sqrt(np.asarray(profiles.multiply(profiles).sum(axis=1))).reshape(-1, 1)
    scores = np.asarray((profiles @ vectors.T).todense() if sp.issparse(vectors) else profiles @ vectors.T)
    return torch.from_numpy((scores / np.where(norms > 0, norms, 1.0)).astype(np.float32))
