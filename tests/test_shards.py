"""WebDataset shards: round trip, rank/worker split, epoch shuffling, determinism, damage, the Ray job."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data_prep.atomic import sha256_file
from data_prep.errors import DataPrepError
from data_prep.processed import load_processed
from data_prep.shards import MANIFEST, read_corpus, read_manifest, write_shards

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PER_SHARD = 16  # the planted dataset: 80 users → 5 collab shards, 608 content samples → 38 shards


@pytest.fixture(scope="module")
def shards(planted_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "planted"
    write_shards(planted_dataset, out, samples_per_shard=PER_SHARD)
    return out


def _damaged_copy(shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    return copy


def _key(sample: dict) -> tuple:
    return tuple(json.dumps(sample[k], sort_keys=True) for k in sorted(sample))


def test_round_trip_matches_the_dataset(planted_dataset, shards):
    ds = load_processed(planted_dataset)
    indptr, items = ds.split_csr("train")
    expected = {u: items[indptr[u]:indptr[u + 1]].tolist() for u in range(ds.n_users) if indptr[u + 1] > indptr[u]}
    for corpus in ("collab", "finetune"):
        samples = list(read_corpus(shards, corpus, dataset=planted_dataset))
        assert sorted(s["user"] for s in samples) == sorted(expected)  # every user exactly once
        assert {s["user"]: s["items"] for s in samples} == expected
    content = list(read_corpus(shards, "content", shuffle=False))
    reviews = [(s["user"], s["item"], s["text"]) for s in content if s["kind"] == "review"]
    assert sorted(reviews) == sorted(zip(ds.review_user.tolist(), ds.review_item.tolist(), ds.review_text))
    assert len(set(reviews)) == len(reviews)
    bios = [(s["user"], s["text"]) for s in content if s["kind"] == "user"]
    assert bios == [(u, t) for u, t in enumerate(ds.user_text) if t]  # canonical order without shuffling
    assert [s["kind"] for s in content] == sorted((s["kind"] for s in content), key=["user", "item", "review"].index)
    manifest = read_manifest(shards)
    assert manifest["corpora"]["content"]["samples"] == len(content) == len(bios) + ds.n_items + len(reviews)
    assert all(s["bytes"] == (shards / s["name"]).stat().st_size for s in manifest["corpora"]["content"]["shards"])


def test_shard_byte_limit(planted_dataset, tmp_path):
    manifest = write_shards(planted_dataset, tmp_path / "small", max_shard_bytes=20480)
    sizes = [s["bytes"] for c in manifest["corpora"].values() for s in c["shards"]]
    assert max(sizes) <= 20480 and len(manifest["corpora"]["content"]["shards"]) > 1


def test_ranks_and_workers_split_disjointly(shards):
    full = Counter(_key(s) for s in read_corpus(shards, "content"))
    parts = [Counter(_key(s) for s in read_corpus(shards, "content", rank=r, world_size=2, seed=3, epoch=1))
             for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and parts[0] + parts[1] == full
    workers = [Counter(_key(s) for s in read_corpus(shards, "content", rank=1, world_size=2, worker=w,
                                                    num_workers=2, seed=3, epoch=1)) for w in range(2)]
    assert not set(workers[0]) & set(workers[1]) and workers[0] + workers[1] == parts[1]


def test_epochs_reshuffle_reproducibly(shards):
    def order(seed: int, epoch: int) -> list[int]:
        return [s["user"] for s in read_corpus(shards, "collab", shuffle_buffer=32, seed=seed, epoch=epoch)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 0)) == sorted(order(0, 1))


def test_writing_is_deterministic(planted_dataset, shards, tmp_path):
    again = tmp_path / "again"
    write_shards(planted_dataset, again, samples_per_shard=PER_SHARD)
    files = sorted(p.relative_to(shards) for p in shards.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((shards / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_changed_shard_is_named(shards, tmp_path):
    copy = _damaged_copy(shards, tmp_path)
    shard = copy / "collab" / "collab-000002.tar"
    data = bytearray(shard.read_bytes())
    data[600:604] = b"XXXX"  # inside the first sample's payload: same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match=r"collab-000002\.tar: sha256 differs.*manifest"):
        read_corpus(copy, "collab")
    stream = read_corpus(copy, "collab", skip_corrupt=True)
    assert stream.skipped == [shard]
    assert len(list(stream)) == 80 - PER_SHARD


def test_truncated_shard_is_named(shards, tmp_path):
    copy = _damaged_copy(shards, tmp_path)
    shard = copy / "content" / "content-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # in the middle of a member
    with pytest.raises(DataPrepError, match=r"content-000001\.tar: 3000 bytes, the manifest says"):
        read_corpus(copy, "content")
    # A manifest that agrees with the damaged file: the tar reader itself must name the shard.
    manifest = json.loads((copy / MANIFEST).read_text())
    entry = next(s for s in manifest["corpora"]["content"]["shards"] if s["name"].endswith("000001.tar"))
    entry["bytes"], entry["sha256"] = 3000, sha256_file(shard)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match=r"content-000001\.tar: unreadable WebDataset shard"):
        list(read_corpus(copy, "content", shuffle=False))
    stream = read_corpus(copy, "content", shuffle=False, skip_corrupt=True)
    samples = list(stream)
    assert stream.skipped == [shard] and PER_SHARD < len(samples) < 608
    # Cut at a member boundary, the tar reads as complete: the manifest's sample count catches it.
    shard.write_bytes((shards / "content" / shard.name).read_bytes()[:3 * 1024])
    entry["bytes"], entry["sha256"] = 3 * 1024, sha256_file(shard)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match=rf"content-000001\.tar: 3 samples read, the manifest says {PER_SHARD}"):
        list(read_corpus(copy, "content", shuffle=False))


def test_dataset_hash_mismatch_and_missing_paths(planted_dataset, shards, tmp_path):
    copy = _damaged_copy(shards, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["dataset"]["meta_sha256"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match=r"manifest\.json: shards were written from .* 0{64}.*meta\.json has"):
        read_corpus(copy, "collab", dataset=planted_dataset)
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DataPrepError, match=str(missing)):
        write_shards(missing, tmp_path / "out")
    with pytest.raises(DataPrepError, match=str(missing)):
        read_corpus(shards, "collab", dataset=missing)
    with pytest.raises(DataPrepError, match="manifest missing"):
        read_corpus(tmp_path, "collab")
    with pytest.raises(DataPrepError, match="separate from the processed dataset"):
        write_shards(planted_dataset, planted_dataset / "shards")


def test_job_script_names_a_missing_dataset(tmp_path):
    missing = tmp_path / "none"
    done = subprocess.run([sys.executable, "ray_jobs/shard_corpora.py", "--dataset", str(missing), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and str(missing) in done.stderr


# ---- the Ray job ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_ray_job_writes_the_same_shards(ray_cluster, planted_dataset, shards, tmp_path):
    out = tmp_path / "ray-shards"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster.address, "--working-dir", str(ROOT),
              "--runtime-env", str(ROOT / "ray_jobs" / "runtime_env.yaml"), "--",
              sys.executable, "ray_jobs/shard_corpora.py", "--dataset", str(planted_dataset), "--out", str(out),
              "--samples-per-shard", str(PER_SHARD)]
    done = subprocess.run(submit, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout.lower() and "finetune" in done.stdout
    assert (out / MANIFEST).read_bytes() == (shards / MANIFEST).read_bytes()  # same bytes as the local writer
    assert len(list(read_corpus(out, "collab", dataset=planted_dataset))) == 80


# ---- the trainer reads the shards ----------------------------------------------------------------

def _corpora(planted_dataset, tiny_llama, shards_dir=None):
    from cllm4rec.backbone import load_backbone
    from cllm4rec.tokenization import IdTokenizer
    from trainer.data import Corpora

    dataset = load_processed(planted_dataset)
    _, hf_tokenizer = load_backbone(tiny_llama)
    tokenizer = IdTokenizer(hf_tokenizer, len(hf_tokenizer) + 8, dataset.n_users, dataset.n_items)
    return Corpora.build(dataset, tokenizer, max_items=6, max_main_tokens=16, shards=shards_dir,
                         dataset_path=planted_dataset, shuffle_buffer=50)


def _documents(stream) -> Counter:
    """Multiset of an epoch's documents: token ids (+ finetuning targets) of every non-padding row."""
    docs: Counter = Counter()
    for batch in stream:
        if float(batch["weight"]) == 0.0:
            continue
        for row, length in enumerate(batch["lengths"].tolist()):
            targets = tuple(batch["target_items"][batch["target_rows"] == row].tolist()) if "target_rows" in batch else ()
            docs[(tuple(batch["input_ids"][row, :length].tolist()), targets)] += 1
    return docs


def test_shard_epochs_feed_the_same_documents_as_memory(planted_dataset, tiny_llama, shards):
    """Same documents per epoch (reordering, caps and masks seeded per user), only the order differs."""
    from trainer.data import epoch_rng

    memory, sharded = _corpora(planted_dataset, tiny_llama), _corpora(planted_dataset, tiny_llama, shards)
    streams = {
        "collab": lambda c, rng: c.collab_batches(rng, 8, True),
        "content": lambda c, rng: c.content_batches(rng, 8),
        "finetune": lambda c, rng: c.finetune_batches(rng, 8, mode="fixed", ratio=0.2, target="all"),
    }
    for corpus, make in streams.items():
        a = _documents(make(memory, epoch_rng(0, "e1", corpus)))
        b = _documents(make(sharded, epoch_rng(0, "e1", corpus)))
        assert a == b, corpus
        assert sum(a.values()) == {"collab": 80, "content": 608, "finetune": 80}[corpus]
    first = [tuple(b["input_ids"][0].tolist()) for b in sharded.collab_batches(epoch_rng(0, "e1"), 8, True)]
    again = [tuple(b["input_ids"][0].tolist()) for b in sharded.collab_batches(epoch_rng(0, "e2"), 8, True)]
    assert first != again  # epochs re-shuffle


def test_shard_stream_ranks_agree_on_steps_and_split_users(planted_dataset, tiny_llama, shards):
    from trainer.data import epoch_rng
    from trainer.distributed import Dist

    sharded = _corpora(planted_dataset, tiny_llama, shards)
    streams = [sharded.collab_batches(epoch_rng(0, "e"), 8, True, Dist(rank, 2, rank)) for rank in (0, 1)]
    assert streams[0].steps == streams[1].steps
    users = [[int(u) - sharded.tokenizer.vocab_rows for b in s if float(b["weight"]) for u in b["input_ids"][:, 1].tolist()]
             for s in streams]
    assert not set(users[0]) & set(users[1]) and sorted(users[0] + users[1]) == list(range(80))


@pytest.mark.slow
def test_training_from_shards_matches_memory(planted_dataset, tiny_llama, shards, tmp_path):
    """The whole recipe from shards reaches the in-memory metrics within 0.05 (batches differ in
    composition and order, so the trajectories are not identical)."""
    from conftest import tiny_overrides
    from trainer.config_loading import load_config
    from trainer.pipeline import train

    def run(name: str, *extra: str) -> dict:
        overrides = tiny_overrides(planted_dataset, tiny_llama, tmp_path / name, **{"baselines.multivae": False,
                                   "baselines.ease": False, "distributed.engine": "plain"})
        return train(load_config("quick", [*overrides, *extra]), progress=False)["CLLM4Rec"]

    memory, sharded = run("memory"), run("shards", f"data.shards={shards}")
    for key in ("recall@20", "recall@40", "ndcg@100"):
        assert sharded[key] == pytest.approx(memory[key], abs=0.05), key


def test_training_refuses_or_skips_a_corrupted_shard(planted_dataset, tiny_llama, shards, tmp_path):
    """A damaged shard stops the build naming it; with skip_corrupt it is left out and counted."""
    from trainer.data import Corpora, epoch_rng

    copy = _damaged_copy(shards, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    victim = manifest["corpora"]["content"]["shards"][0]
    data = bytearray((copy / victim["name"]).read_bytes())
    data[600] ^= 0xFF
    (copy / victim["name"]).write_bytes(bytes(data))
    with pytest.raises(DataPrepError, match=victim["name"].split("/")[-1]):
        _corpora(planted_dataset, tiny_llama, copy)
    base = _corpora(planted_dataset, tiny_llama)
    skipping = Corpora.build(load_processed(planted_dataset), base.tokenizer, max_items=6, max_main_tokens=16,
                             shards=copy, dataset_path=planted_dataset, skip_corrupt=True)
    assert [p.name for p in skipping.skipped_shards] == [victim["name"].split("/")[-1]]
    docs = _documents(skipping.content_batches(epoch_rng(0, "e"), 8))
    assert sum(docs.values()) == 608 - victim["samples"]
