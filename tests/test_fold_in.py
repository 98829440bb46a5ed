"""Fold-in (`cllm4rec fold-in`): new items and users join a trained model without retraining it.

One smallest-schedule run (tiny LLaMA) on a private copy of the planted dataset, and one fold-in (5 C-step
passes, the default ridge alignment) of four new items (one per planted cluster), two new users with
biographies and interactions, and one new user known only from interactions, are shared by the module.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cllm4rec.interactions import UserItems
from cllm4rec.table_init import mean_word_embedding
from conftest import CLUSTER_WORDS, FOLD_IN_SMALL, planted_raw, tiny_overrides
from data_prep.errors import DataPrepError
from data_prep.prepare import prepare
from data_prep.processed import dataset_hash, load_processed
from data_prep.readers.generic_spec import InteractionTableSpec, ReviewTableSpec, TextTableSpec
from data_prep.readers.new_entities import read_new_entities
from trainer import checkpoint as ckpt
from trainer import cli
from trainer.catalogue import grow_dataset
from trainer.build import RunParts
from trainer.config import ConfigError, TrainConfig
from trainer.config_loading import load_config
from trainer.alignment import fit_alignment, fit_rank_map
from trainer.evaluate import scoring_prompt
from trainer.fold_in import (CALIBRATION_USERS, RANK_USERS, FoldInOptions, calibration_users, fold_in, fold_in_plans,
                             history_features, text_features)
from trainer.phases import StepKind
from trainer.pipeline import train
from trainer.serving import Recommender, load_saved, user_states

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N_USERS, N_ITEMS = 80, 40  # the planted dataset's


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama) -> Path:
    """A trained run on a private dataset folder (a test later removes it)."""
    root = tmp_path_factory.mktemp("fold-in")
    prepare(planted_raw(), root / "data", seed=0)
    train(load_config(None, tiny_overrides(root / "data", tiny_llama, root / "run", **FOLD_IN_SMALL)), progress=False)
    return root / "run"


def new_tables(folder: Path) -> dict[str, Path]:
    """New items (CSV), users (JSON lines) and interactions (Parquet): one item per planted cluster, new user
    nu<c> of cluster c with three of its items and its new item, nx0 known only from two interactions."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item": [f"new{c}" for c in range(4)], "text": [f"a {w}" for w in CLUSTER_WORDS]}).to_csv(
        folder / "items.csv", index=False)
    pd.DataFrame({"user": ["nu0", "nu1"], "text": [f"a user who loves {CLUSTER_WORDS[c]}" for c in range(2)]}).to_json(
        folder / "users.jsonl", orient="records", lines=True)
    rows = [(f"nu{c}", f"i{c + 4 * k}") for c in range(2) for k in range(3)] + [("nu0", "new0"), ("nu1", "new1")]
    rows += [("nx0", "i2"), ("nx0", "new2"), ("nx0", "i2")]  # a repeated pair is merged
    pd.DataFrame(rows, columns=["user", "item"]).to_parquet(folder / "inter.parquet")
    return {"items": folder / "items.csv", "users": folder / "users.jsonl", "interactions": folder / "inter.parquet"}


def read(tables: dict[str, Path]):
    return read_new_entities(TextTableSpec(tables["items"], "item", ("text",)),
                             TextTableSpec(tables["users"], "user", ("text",)),
                             InteractionTableSpec(tables["interactions"], "user", "item"))


@pytest.fixture(scope="module")
def folded(run: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("folded")
    result = fold_in(run / "model", read(new_tables(root / "input")), root / "model",
                     FoldInOptions(passes=5, progress=False), pyfunc=root / "pyfunc")
    return {"result": result, "root": root, "model": root / "model", "pyfunc": root / "pyfunc"}


def tables(model: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model / ckpt.TABLES))


def test_old_rows_are_bit_identical_and_new_rows_learned(run: Path, folded: dict) -> None:
    before, after = tables(run / "model"), tables(folded["model"])
    grown = {"user": N_USERS + 3, "item": N_ITEMS + 4}
    for name, table in before.items():
        kind = name.split("_")[1]
        assert after[name].shape == (grown[kind], table.shape[1])
        assert torch.equal(after[name][: table.shape[0]], table), name  # bit-identical
    result = folded["result"]
    assert result.added == {"users": 3, "items": 4, "interactions": 10, "reviews": 0}
    assert len(result.content_loss) == 5 and result.content_loss[-1] < result.content_loss[0] - 1e-3
    assert len(result.collab_loss) == 5 and result.collab_loss[-1] < 0.95 * result.collab_loss[0]
    for kind, old in (("user", N_USERS), ("item", N_ITEMS)):
        centroid = before[f"content_{kind}"].mean(dim=0)  # where every new row started
        moved = (after[f"content_{kind}"][old:] - centroid).norm(dim=1)
        learned = moved[:2] if kind == "user" else moved  # nx0 has no biography: its content row stays
        assert bool((learned > 1e-2).all()), moved
    # new items sit where the ridge map put them; new users' collaborative rows were refined from their prior's mean
    assert result.alignment["method"] == "ridge" and result.alignment["items"] == 4
    assert bool(((after["collab_item"][N_ITEMS:] - after["content_item"][N_ITEMS:]).norm(dim=1) > 1e-3).all())
    assert bool(((after["collab_user"][N_USERS:] - after["content_user"][N_USERS:]).norm(dim=1) > 1e-3).all())


def test_model_folder_records_the_grown_catalogue(run: Path, folded: dict) -> None:
    model = folded["model"]
    saved = ckpt.load_model(model)  # every checksum, the bundled dataset's included
    dataset = load_processed(model / ckpt.DATASET)
    assert dataset.item_raw[N_ITEMS:] == ["new0", "new1", "new2", "new3"]
    assert dataset.user_raw[N_USERS:] == ["nu0", "nu1", "nx0"] and dataset.user_text[-1] == ""
    assert dataset.item_text[N_ITEMS] == f"a {CLUSTER_WORDS[0]}"
    source = ckpt.load_model(run / "model").identity
    assert saved.identity == {**source, "dataset_hash": dataset_hash(model / ckpt.DATASET),
                              "n_users": N_USERS + 3, "n_items": N_ITEMS + 4}
    assert set(dataset.split_csr("train")[1][-10:]) >= {N_ITEMS, N_ITEMS + 1, N_ITEMS + 2}
    report = json.loads((model / "fold_in.json").read_text())
    assert report["added"] == folded["result"].added and report["options"]["passes"] == 5
    assert report["options"]["align"] == "ridge" and report["alignment"] == folded["result"].alignment
    assert not [p.name for p in folded["root"].iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_folded_model_serves_new_ids_without_the_original_dataset(run: Path, folded: dict) -> None:
    import mlflow

    data = run.parent / "data"
    shutil.move(data, data.with_name("moved-away"))
    try:
        recommender = Recommender.load(folded["model"])
        everything = recommender.recommend(["u0", "u1"], N_ITEMS + 4).to_pydict()
        for c in range(4):  # whole-catalogue scoring ranks the new items for old users
            assert everything["item"].count(f"new{c}") == 2
        assert everything["item_text"][everything["item"].index("new3")] == f"a {CLUSTER_WORDS[3]}"
        answer = recommender.recommend(["nu0", "nx0"], 5, histories=[["new3"], []]).to_pydict()
        assert answer["user"] == ["nu0"] * 5 + ["nx0"] * 5
        seen = {"i0", "i4", "i8", "new0", "new3"}
        assert not seen & set(answer["item"][:5])  # history and training items are excluded
        model = mlflow.pyfunc.load_model(str(folded["pyfunc"]))
        got = model.predict(pd.DataFrame({"user": ["nu1"]}), params={"top_m": 3})
        assert got["item"].tolist() == recommender.recommend(["nu1"], 3).to_pydict()["item"]
    finally:
        shutil.move(data.with_name("moved-away"), data)


def test_new_user_is_recommended_items_of_their_cluster(folded: dict) -> None:
    """The planted property for a new user: nu0's history is cluster 0, so are most of its top items."""
    answer = Recommender.load(folded["model"]).recommend(["nu0"], 5).to_pydict()
    clusters = [int(item.removeprefix("i").removeprefix("new")) % 4 for item in answer["item"]]
    assert clusters.count(0) >= 3, answer["item"]


def test_failed_fold_in_leaves_the_previous_output_whole(run: Path, folded: dict, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "model"
    shutil.copytree(folded["model"], out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-pass")

    monkeypatch.setattr("trainer.fold_in.run_epoch", crash)
    with pytest.raises(RuntimeError, match="killed mid-pass"):
        fold_in(run / "model", read(new_tables(tmp_path / "input")), out, FoldInOptions(progress=False))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "model"]


# ---- where new rows start ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(run: Path, tiny_llama) -> Path:
    """`run`'s schedule and dataset, its content rows started from their texts (`model.content_init_from_text`)."""
    out = run.parent / "text-run"
    train(load_config(None, tiny_overrides(run.parent / "data", tiny_llama, out, **FOLD_IN_SMALL,
                                           **{"model.content_init_from_text": True})), progress=False)
    return out


def start_rows(model_dir: Path, root: Path, align: str = "none", align_users: str = "none",
               align_features: str = "words") -> dict[str, torch.Tensor]:
    """The tables of `model_dir` after a fold-in without passes (`align`, `align_users`, `align_features`) of new item new0 (a
    text), item blank (no text), user nu0 (a biography, two interactions: i0 and new0) and user nx0 (no
    biography, one interaction: blank)."""
    root.mkdir()
    (root / "items.csv").write_text(f"item,text\nnew0,a {CLUSTER_WORDS[0]}\nblank,\n")
    (root / "users.jsonl").write_text(f'{{"user": "nu0", "text": "a user who loves {CLUSTER_WORDS[0]}"}}\n')
    (root / "inter.csv").write_text("user,item\nnu0,i0\nnu0,new0\nnx0,blank\n")
    tables_in = {"items": root / "items.csv", "users": root / "users.jsonl", "interactions": root / "inter.csv"}
    fold_in(model_dir, read(tables_in), root / "model",
            FoldInOptions(passes=0, history_passes=0, align=align, align_users=align_users,
                          align_features=align_features, progress=False))
    return tables(root / "model")


def folded_states(model_dir: Path, limit: int = CALIBRATION_USERS) -> tuple[TrainConfig, RunParts, np.ndarray,
                                                                              torch.Tensor]:
    """(config, parts, calibration users, their scoring states) of the folded model `model_dir` (start_rows')."""
    config, parts, engine = load_saved(model_dir)
    new_users = np.arange(parts.dataset.n_users) >= N_USERS
    users = calibration_users(parts.corpora.train, new_users, np.arange(parts.dataset.n_items) >= N_ITEMS, seed=0,
                              limit=limit)
    states = user_states(engine, parts.corpora, users, prompt=scoring_prompt(config), seed=config.seed, batch_size=16,
                         progress=False)
    return config, parts, users, states


def test_new_rows_start_from_their_text_when_the_model_did(text_run: Path, tmp_path: Path) -> None:
    """content_init_from_text: a new entity with text starts at its text's mean word embedding (content and
    collaborative rows alike); one without text at the centroid; old rows stay bit-identical."""
    before, after = tables(text_run / "model"), start_rows(text_run / "model", tmp_path / "fold")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    _, parts, _ = load_saved(tmp_path / "fold" / "model")
    words, text_ids = parts.model.backbone.get_input_embeddings(), parts.corpora.entity_text_ids()
    assert ("item", N_ITEMS + 1) not in text_ids and ("user", N_USERS + 1) not in text_ids  # blank, nx0
    for kind, row in (("item", N_ITEMS), ("user", N_USERS)):  # new0, nu0
        expected = mean_word_embedding(words, text_ids[kind, row])
        torch.testing.assert_close(after[f"content_{kind}"][row], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(after[f"collab_{kind}"][row], expected, rtol=0, atol=1e-6)
        assert (expected - before[f"content_{kind}"].mean(dim=0)).norm() > 1e-2  # not the centroid
    for kind, row in (("item", N_ITEMS + 1), ("user", N_USERS + 1)):  # blank, nx0: no text
        centroid = before[f"content_{kind}"].mean(dim=0)
        torch.testing.assert_close(after[f"content_{kind}"][row], centroid)
        torch.testing.assert_close(after[f"collab_{kind}"][row], centroid)  # step 3: its content row


def test_a_new_users_reviews_start_their_rows_where_the_model_reads_reviews(run: Path, tiny_llama,
                                                                           tmp_path: Path) -> None:
    """`--reviews`: a new user's reviews join the grown dataset as training reviews; under a model built with
    `content_init_reviews` a new user without a biography starts both rows at the mean word embedding of
    what they wrote, as the build started the old users' rows."""
    out = run.parent / "review-run"
    train(load_config(None, tiny_overrides(run.parent / "data", tiny_llama, out, **{
        **FOLD_IN_SMALL, "data.reviews": True, "model.content_init_from_text": True,
        "model.content_init_reviews": True})), progress=False)
    (tmp_path / "inter.csv").write_text("user,item\nnr0,i0\nnr0,i4\nnx0,i1\n")
    review = f"great {CLUSTER_WORDS[0]}, a user who loves {CLUSTER_WORDS[0]}"
    (tmp_path / "reviews.jsonl").write_text(json.dumps({"user": "nr0", "item": "i0", "body": review}) + "\n")
    new = read_new_entities(interactions=InteractionTableSpec(tmp_path / "inter.csv", "user", "item"),
                            reviews=ReviewTableSpec(tmp_path / "reviews.jsonl", "user", "item", "body"))
    result = fold_in(out / "model", new, tmp_path / "model", FoldInOptions(passes=0, history_passes=0, align="none",
                                                                          progress=False))
    assert result.added == {"users": 2, "items": 0, "interactions": 3, "reviews": 1}
    grown = load_processed(tmp_path / "model" / ckpt.DATASET)
    old = load_processed(run.parent / "data")
    assert grown.review_text[: len(old.review_text)] == old.review_text and grown.review_text[-1] == review
    assert (int(grown.review_user[-1]), int(grown.review_item[-1])) == (N_USERS, old.item_raw.index("i0"))
    before, after = tables(out / "model"), tables(tmp_path / "model")
    _, parts, _ = load_saved(tmp_path / "model")
    words, text_ids = parts.model.backbone.get_input_embeddings(), parts.corpora.entity_text_ids(reviews=True)
    expected = mean_word_embedding(words, text_ids["user", N_USERS])  # nr0: its review, no biography
    assert parts.tokenizer.tokenizer.decode(text_ids["user", N_USERS]).strip() == review
    torch.testing.assert_close(after["content_user"][N_USERS], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after["collab_user"][N_USERS], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(after["content_user"][N_USERS + 1], before["content_user"].mean(dim=0))  # nx0: none


def test_ridge_places_a_new_item_at_its_texts_image(text_run: Path, tmp_path: Path) -> None:
    """--align ridge: new0's collaborative row is the image of its text feature under the map fitted on the old
    items' features and rows, scaled over the old users' scoring states; blank (no text) keeps its prior's
    mean; the content rows keep the text rule; old rows stay bit-identical."""
    before, after = tables(text_run / "model"), start_rows(text_run / "model", tmp_path / "fold", align="ridge")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    config, parts, users, states = folded_states(tmp_path / "fold" / "model")
    items, features = text_features(parts.model, parts.corpora)
    assert items.tolist() == [*range(N_ITEMS), N_ITEMS]  # blank has no text
    assert users.tolist() == list(range(N_USERS))  # every old user: fewer than CALIBRATION_USERS
    fitted = fit_alignment("ridge", features[:N_ITEMS], before["collab_item"], states)
    torch.testing.assert_close(after["collab_item"][N_ITEMS], fitted(features[N_ITEMS:])[0].float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(after["content_item"][N_ITEMS], features[N_ITEMS], rtol=0, atol=1e-6)  # the text rule
    torch.testing.assert_close(after["collab_item"][N_ITEMS + 1], before["content_item"].mean(dim=0))  # blank: step 4
    report = json.loads((tmp_path / "fold" / "model" / "fold_in.json").read_text())["alignment"]
    assert report == {"method": "ridge", "items": 1, "fitted_on": N_ITEMS, "users": N_USERS,
                      "alpha": pytest.approx(fitted.alpha), "scale": pytest.approx(fitted.scale)}


def test_tfidf_features_feed_the_ridge_map(text_run: Path, tmp_path: Path) -> None:
    """--align-features tfidf: the features are the items' TF-IDF vectors reduced by LSA (fewer than K
    dimensions here: the planted texts have few distinct words); new0 starts at its feature's image under the
    ridge map fitted on the old items; old rows stay bit-identical; moments with them is refused by name."""
    before = tables(text_run / "model")
    after = start_rows(text_run / "model", tmp_path / "fold", align="ridge", align_features="tfidf")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    config, parts, users, states = folded_states(tmp_path / "fold" / "model")
    items, features = text_features(parts.model, parts.corpora, "tfidf", seed=0)
    words = text_features(parts.model, parts.corpora)[1]
    assert items.tolist() == [*range(N_ITEMS), N_ITEMS] and features.shape[0] == words.shape[0]
    assert 1 <= features.shape[1] < parts.model.dim
    fitted = fit_alignment("ridge", features[:N_ITEMS], before["collab_item"], states)
    torch.testing.assert_close(after["collab_item"][N_ITEMS], fitted(features[N_ITEMS:])[0].float(), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="align_features=tfidf needs ridge maps"):
        FoldInOptions(align="moments", align_features="tfidf")


def test_rank_places_a_new_item_at_its_texts_image(text_run: Path, tmp_path: Path) -> None:
    """--align rank: new0's collaborative row is the image of its text feature under the map fitted by the
    model's ranking of the old calibration users' training items; the report names the decay; old rows stay
    bit-identical; new users have no rank map."""
    before = tables(text_run / "model")
    after = start_rows(text_run / "model", tmp_path / "fold", align="rank", align_features="tfidf")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    config, parts, users, states = folded_states(tmp_path / "fold" / "model", limit=RANK_USERS)
    items, features = text_features(parts.model, parts.corpora, "tfidf", seed=0)
    targets = parts.corpora.train.to_dense(users)[:, :N_ITEMS]
    fitted = fit_rank_map(features[:N_ITEMS], before["collab_item"], states, targets, seed=0)
    torch.testing.assert_close(after["collab_item"][N_ITEMS], fitted(features[N_ITEMS:])[0].float(), rtol=0, atol=1e-5)
    report = json.loads((tmp_path / "fold" / "model" / "fold_in.json").read_text())["alignment"]
    assert report == {"method": "rank", "items": 1, "fitted_on": N_ITEMS, "users": N_USERS,
                      "alpha": pytest.approx(fitted.alpha), "scale": pytest.approx(fitted.scale)}
    with pytest.raises(ConfigError, match="align_users must be one of none, moments, ridge; got 'rank'"):
        FoldInOptions(align_users="rank")


def test_history_features_average_the_texts_of_each_users_items() -> None:
    train = UserItems.from_lists([[0, 2], [1], [3, 2, 0]], n_items=4)  # item 1 has no text
    features = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 2.0]])  # items 0, 2, 3
    users, profiles = history_features(train, np.array([0, 2, 3]), features)
    assert users.tolist() == [0, 2]  # user 1's only item has no text
    torch.testing.assert_close(profiles, torch.tensor([[0.5, 2.0], [4.0 / 3.0, 2.0]]))


def test_align_users_places_a_new_user_at_their_history_texts_image(text_run: Path, tmp_path: Path) -> None:
    """--align-users ridge: nu0's collaborative row is the image of the mean text feature of its items (i0,
    new0) under the map fitted on the old users' such features and rows, scaled to the rows' spread; nx0
    (whose only item has no text) keeps its prior's mean; content rows and old rows stay as they were."""
    before = tables(text_run / "model")
    after = start_rows(text_run / "model", tmp_path / "fold", align_users="ridge")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    _, parts, _ = load_saved(tmp_path / "fold" / "model")
    items, features = text_features(parts.model, parts.corpora)
    users, profiles = history_features(parts.corpora.train, items, features)
    assert users.tolist() == list(range(N_USERS + 1))  # not nx0
    i0 = parts.dataset.item_raw.index("i0")
    torch.testing.assert_close(profiles[N_USERS], features[[i0, N_ITEMS]].mean(dim=0))
    fitted = fit_alignment("ridge", profiles[:N_USERS], before["collab_user"], None, "user")
    torch.testing.assert_close(after["collab_user"][N_USERS], fitted(profiles[N_USERS:])[0].float(), rtol=0, atol=1e-5)
    assert (after["collab_user"][N_USERS] - after["content_user"][N_USERS]).norm() > 1e-2
    torch.testing.assert_close(after["collab_user"][N_USERS + 1], before["content_user"].mean(dim=0))
    report = json.loads((tmp_path / "fold" / "model" / "fold_in.json").read_text())["user_alignment"]
    assert report == {"method": "ridge", "users": 1, "fitted_on": N_USERS, "alpha": pytest.approx(fitted.alpha),
                      "scale": pytest.approx(fitted.scale)}


def test_new_user_rows_are_token_like_where_the_warm_up_made_them_so(run: Path, tiny_llama, tmp_path: Path) -> None:
    """A model whose warm-up set its collaborative USER rows to token-like copies of the content rows
    (`collab_from_content_tables: users`, α = 0.25): a new user's collaborative row is the same token-like copy
    of its content row, centred on the old content rows' mean (at the backbone's mean word norm), as the
    trained users' rows started; a new item's is its content row, as the model's items were not copied."""
    from cllm4rec.table_init import token_like_rows, word_embedding_stats

    out = tmp_path / "token-run"
    train(load_config(None, tiny_overrides(run.parent / "data", tiny_llama, out, **FOLD_IN_SMALL, **{
        "model.content_init_from_text": True, "pretrain.collab_from_content": True,
        "pretrain.collab_from_content_tables": "users", "pretrain.collab_from_content_token_alpha": 0.25})),
        progress=False)
    before, after = tables(out / "model"), start_rows(out / "model", tmp_path / "fold")
    for name, table in before.items():
        assert torch.equal(after[name][: table.shape[0]], table), name
    _, parts, _ = load_saved(tmp_path / "fold" / "model")
    words = parts.model.backbone.get_input_embeddings()
    want = token_like_rows(after["content_user"][N_USERS:], words, 0.25, before["content_user"].mean(dim=0))
    torch.testing.assert_close(after["collab_user"][N_USERS:], want, rtol=0, atol=1e-5)
    _, word_norm = word_embedding_stats(words)
    torch.testing.assert_close(after["collab_user"][N_USERS:].norm(dim=1), word_norm.expand(2), rtol=1e-5, atol=0)
    torch.testing.assert_close(after["collab_item"][N_ITEMS:], after["content_item"][N_ITEMS:])


def test_new_rows_start_at_the_centroid_without_the_text_rule(run: Path, tmp_path: Path) -> None:
    """Without content_init_from_text every new content row is its table's centroid; with no pass the
    collaborative rows are set to it (step 3), whatever their text."""
    before, after = tables(run / "model"), start_rows(run / "model", tmp_path / "fold")
    for kind, old in (("item", N_ITEMS), ("user", N_USERS)):
        centroid = before[f"content_{kind}"].mean(dim=0).expand(2, -1)
        torch.testing.assert_close(after[f"content_{kind}"][old:], centroid)
        torch.testing.assert_close(after[f"collab_{kind}"][old:], centroid)


# ---- bad input: one-line errors naming file, row and field ----------------------------------------

@pytest.fixture(scope="module")
def planted(run: Path):
    return load_processed(run.parent / "data")


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item,text\na,one\nb,two\na,three\n")
    with pytest.raises(DataPrepError, match=r"items.csv: row 3: column 'item': duplicate id 'a' \(first at row 1\)"):
        read_new_entities(TextTableSpec(tmp_path / "items.csv", "item", ("text",)))
    (tmp_path / "users.jsonl").write_text('{"user": "x", "text": "a"}\n{"user": "x", "text": "b"}\n')
    with pytest.raises(DataPrepError, match=r"users.jsonl: line 2: column 'user': duplicate id 'x' \(first at line 1\)"):
        read_new_entities(users=TextTableSpec(tmp_path / "users.jsonl", "user", ("text",)))


def test_missing_text_column_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item,title\na,one\n")
    with pytest.raises(DataPrepError, match=r"items.csv: missing column 'text' \(available: item, title\)"):
        read_new_entities(TextTableSpec(tmp_path / "items.csv", "item", ("text",)))


def test_ids_already_in_the_model_are_refused_naming_a_few(planted, tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item,text\n" + "".join(f"i{j},t\n" for j in range(7)) + "fresh,t\n")
    new = read_new_entities(TextTableSpec(tmp_path / "items.csv", "item", ("text",)))
    with pytest.raises(DataPrepError) as error:
        grow_dataset(planted, new)
    assert str(error.value) == (f"{tmp_path / 'items.csv'}: column 'item': 7 item id(s) already in the model: "
                                "'i0', 'i1', 'i2', 'i3', 'i4' … and 2 more (fold-in adds new items only)")


@pytest.mark.parametrize("rows, message", [
    ("user,item\nn1,i3\nn1,nowhere\n", "inter.csv: row 2: column 'item': unknown item 'nowhere': neither in the model "
                                       "nor among the new items"),
    ("user,item\nu5,i3\n", "inter.csv: row 1: column 'user': user 'u5' is already in the model"),
])
def test_bad_interactions_name_file_row_and_column(planted, tmp_path: Path, rows: str, message: str) -> None:
    (tmp_path / "inter.csv").write_text(rows)
    new = read_new_entities(interactions=InteractionTableSpec(tmp_path / "inter.csv", "user", "item"))
    with pytest.raises(DataPrepError, match=message):
        grow_dataset(planted, new)


def test_reviews_need_their_new_interactions(planted, tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text("user,item\nn1,i3\n")
    (tmp_path / "reviews.csv").write_text("user,item,text\nn1,i3,fine\nn1,i5,stray\n")
    reviews = ReviewTableSpec(tmp_path / "reviews.csv", "user", "item", "text")
    new = read_new_entities(interactions=InteractionTableSpec(tmp_path / "inter.csv", "user", "item"), reviews=reviews)
    with pytest.raises(DataPrepError, match=r"reviews.csv: columns 'user', 'item': 1 review\(s\) of no new interaction, "
                                            r"e.g. user 'n1', item 'i5'"):
        grow_dataset(planted, new)
    with pytest.raises(DataPrepError, match=r"reviews.csv: reviews need the new interactions they review"):
        read_new_entities(TextTableSpec(tmp_path / "reviews.csv", "item", ("text",)), reviews=reviews)


def test_cli_errors_are_one_line_and_write_nothing(run: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "inter.csv").write_text("user,item\nn1,nowhere\n")
    out = tmp_path / "out"
    code = cli.main(["fold-in", "--model", str(run / "model"), "--interactions", str(tmp_path / "inter.csv"),
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "column 'item': unknown item 'nowhere'" in err, err
    assert not out.exists() and not (tmp_path / "pyfunc").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    code = cli.main(["fold-in", "--model", str(run / "model"), "--interactions", str(tmp_path / "inter.csv"),
                     "--out", str(tmp_path / "notes")])
    assert code == 2 and "not empty and not a saved model; refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    code = cli.main(["fold-in", "--model", str(run / "model"), "--interactions", str(tmp_path / "inter.csv"),
                     "--out", str(run), "--force"])
    assert code == 2 and "holds the input" in capsys.readouterr().err and (run / "model" / ckpt.COMPLETE).is_file()


def test_fold_in_steps_run_at_the_models_own_rates_unless_given_one() -> None:
    """lr None: the C-step at pretrain.lr, the histories' finetuning steps at finetune.lr, constant (the
    model's schedules are of its training, not of a fold-in); a given lr: every step at it."""
    config = load_config(None, ["pretrain.lr=0.002", "finetune.lr=0.0003", "finetune.lr_schedule=cosine"])
    own, given = fold_in_plans(config, None), fold_in_plans(config, 0.05)
    assert (own[StepKind.C_STEP].lr, own[StepKind.FINETUNE].lr) == (0.002, 0.0003)
    assert all(plan.lr == 0.05 for plan in given.values())
    assert all(plan.lr_schedule == "constant" and plan.warmup_steps == 0 for plan in [*own.values(), *given.values()])
    assert FoldInOptions().lr is None


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="passes=-1"):
        FoldInOptions(passes=-1)
    with pytest.raises(ConfigError, match="lr=0"):
        FoldInOptions(lr=0)
    with pytest.raises(ConfigError, match="history_passes=-2"):
        FoldInOptions(history_passes=-2)
    with pytest.raises(ConfigError, match="align must be one of none, moments, ridge, rank; got 'nearest'"):
        FoldInOptions(align="nearest")
    with pytest.raises(ConfigError, match="align_users must be one of none, moments, ridge; got 'text'"):
        FoldInOptions(align_users="text")
