"""WebDataset tar shards of a processed dataset's three training corpora: plan, write, verify, read.

A shard folder is its own folder (never inside the processed dataset):
    manifest.json                    dataset name and meta.json sha256, parameters, every shard's
                                     samples / bytes / sha256, per-corpus totals
    collab/collab-000000.tar ...     one sample per user with training items: {"user", "items"}
    content/content-000000.tar ...   biographies, item texts, training reviews (that order):
                                     {"kind": "user"|"item"|"review" (a ContentKind), "user",
                                     "item", "text"} (-1: none)
    finetune/finetune-000000.tar ... one sample per user with training items: {"user", "items"}
Items are in chronological order. A sample is one tar member "<key>.json", key = "%09d" % its
position in the corpus's canonical order; with a seed, samples are permuted before sharding (keys
keep the canonical position). Samples hold raw indices and text: tokenising happens at read time.
Same processed dataset and parameters → byte-identical shards and manifest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds

from data_prep.atomic import atomic_folder, sha256_file
from data_prep.errors import DataPrepError
from data_prep.processed import ProcessedDataset, dataset_hash, load_processed

log = logging.getLogger(__name__)

CORPORA = ("collab", "content", "finetune")
MANIFEST = "manifest.json"
FORMAT = "cllm4rec-webdataset-shards"
FORMAT_VERSION = 1
DEFAULT_SAMPLES_PER_SHARD = 10_000
DEFAULT_MAX_SHARD_BYTES = 256 << 20
_BLOCK, _RECORD = 512, 10240  # tar block size; tarfile pads a closed archive to a whole record


def corpus_samples(ds: ProcessedDataset, corpus: str) -> list[dict[str, Any]]:
    """The samples of one corpus in canonical order (the order trainer/data.py Corpora.build reads them in)."""
    if corpus in ("collab", "finetune"):
        indptr, items = ds.split_csr("train")
        return [{"user": u, "items": items[indptr[u]:indptr[u + 1]].tolist()}
                for u in range(ds.n_users) if indptr[u + 1] > indptr[u]]
    if corpus == "content":
        return ds.content_samples()
    raise DataPrepError(f"unknown corpus {corpus!r}; one of {', '.join(CORPORA)}")


def encode_sample(sample: dict[str, Any]) -> str:
    """Canonical JSON text of a sample (sorted keys, no spaces): equal samples give equal bytes."""
    return json.dumps(sample, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _tar_bytes(member_bytes: int) -> int:
    """Size of a closed tar archive whose members take `member_bytes` (headers and padding included)."""
    return -(-(member_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def split_sizes(sizes: list[int], samples_per_shard: int, max_shard_bytes: int) -> list[range]:
    """Consecutive shards over samples of `sizes` payload bytes: each has at most `samples_per_shard`
    samples and a tar of at most `max_shard_bytes` bytes (a larger single sample gets its own shard)."""
    spans, start, members = [], 0, 0
    for i, size in enumerate(sizes):
        member = _BLOCK + -(-size // _BLOCK) * _BLOCK
        if i > start and (i - start >= samples_per_shard or _tar_bytes(members + member) > max_shard_bytes):
            spans.append(range(start, i))
            start, members = i, 0
        members += member
    if start < len(sizes):
        spans.append(range(start, len(sizes)))
    return spans


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: `name` relative to the shard folder, sample keys and their JSON payloads."""

    corpus: str
    name: str
    keys: list[int]
    payloads: list[str]


@dataclass(frozen=True)
class ShardPlan:
    """Every shard of the three corpora of one processed dataset, and the parameters that made them."""

    dataset_name: str
    dataset_hash: str
    samples_per_shard: int
    max_shard_bytes: int
    seed: int | None
    jobs: list[ShardJob]

    def manifest(self, written: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """The manifest from `write_shard` results (any order; one per job)."""
        by_name = {row["name"]: row for row in written}
        missing = [job.name for job in self.jobs if job.name not in by_name]
        if missing:
            raise DataPrepError(f"shards not written: {', '.join(missing)}")
        corpora = {}
        for corpus in CORPORA:
            rows = [by_name[job.name] for job in self.jobs if job.corpus == corpus]
            corpora[corpus] = {
                "shards": [{k: row[k] for k in ("name", "samples", "bytes", "sha256")} for row in rows],
                "samples": sum(row["samples"] for row in rows),
                "bytes": sum(row["bytes"] for row in rows),
            }
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dataset": {"name": self.dataset_name, "meta_sha256": self.dataset_hash},
            "samples_per_shard": self.samples_per_shard,
            "max_shard_bytes": self.max_shard_bytes,
            "seed": self.seed,
            "corpora": corpora,
        }


def _require_dataset(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataPrepError(f"{path}: processed dataset folder not found; create it with `cllm4rec prepare`")
    return path


def _check_out_dir(out_dir: Path, dataset: Path) -> None:
    """Refuse an output folder that is, or is inside, the dataset, or an existing non-shard folder."""
    out, data = Path(out_dir).resolve(), dataset.resolve()
    if out == data or data in out.parents or out in data.parents:
        raise DataPrepError(f"{out_dir}: the shard folder must be separate from the processed dataset {dataset}")
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise DataPrepError(f"{out_dir}: exists and is not a shard folder (no {MANIFEST}); refusing to replace it")


def plan_shards(dataset: Path, out_dir: Path, *, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, seed: int | None = None) -> ShardPlan:
    """Load the processed dataset at `dataset` and split its corpora into shards (nothing written)."""
    if samples_per_shard < 1 or max_shard_bytes < 1 or (seed is not None and seed < 0):
        raise DataPrepError(f"samples_per_shard ({samples_per_shard}) and max_shard_bytes ({max_shard_bytes}) "
                            f"must be positive, seed ({seed}) absent or non-negative")
    dataset = _require_dataset(dataset)
    _check_out_dir(out_dir, dataset)
    ds = load_processed(dataset)
    jobs = []
    for index, corpus in enumerate(CORPORA):
        payloads = [encode_sample(s) for s in corpus_samples(ds, corpus)]
        order = (np.arange(len(payloads)) if seed is None
                 else np.random.default_rng([seed, index]).permutation(len(payloads))).tolist()
        sizes = [len(payloads[k].encode("utf-8")) for k in order]
        for n, span in enumerate(split_sizes(sizes, samples_per_shard, max_shard_bytes)):
            keys = [order[i] for i in span]
            jobs.append(ShardJob(corpus, f"{corpus}/{corpus}-{n:06d}.tar", keys, [payloads[k] for k in keys]))
    return ShardPlan(ds.name, dataset_hash(dataset), samples_per_shard, max_shard_bytes, seed, jobs)


def write_shard(folder: Path, job: ShardJob) -> dict[str, Any]:
    """Write one shard (fixed mtime/owner/mode: deterministic bytes); returns {corpus, name, samples, bytes, sha256}."""
    path = Path(folder) / job.name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle, wds.TarWriter(handle, user="cllm4rec", group="cllm4rec", mode=0o444,
                                                   encoder=False, mtime=0) as tar:
        for key, payload in zip(job.keys, job.payloads):
            tar.write({"__key__": f"{key:09d}", "json": payload.encode("utf-8")})
    return {"corpus": job.corpus, "name": job.name, "samples": len(job.keys),
            "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_shards(dataset: Path, out_dir: Path, *, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, seed: int | None = None) -> dict[str, Any]:
    """Shard the three corpora of `dataset` into `out_dir` in this process, whole or not at all; returns the manifest."""
    plan = plan_shards(dataset, out_dir, samples_per_shard=samples_per_shard,
                       max_shard_bytes=max_shard_bytes, seed=seed)
    with atomic_folder(Path(out_dir)) as tmp:
        manifest = plan.manifest(write_shard(tmp, job) for job in plan.jobs)
        write_manifest(tmp, manifest)
    return manifest


def read_manifest(folder: Path, dataset: Path | None = None) -> dict[str, Any]:
    """A shard folder's manifest; with `dataset`, its recorded meta.json hash must match that dataset's."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataPrepError(f"{path}: shard manifest missing; write the shards with ray_jobs/shard_corpora.py")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataPrepError(f"{path}: line {err.lineno}: malformed JSON ({err.msg})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DataPrepError(f"{path}: fields 'format'/'version' are {manifest.get('format')!r}/"
                            f"{manifest.get('version')!r}, this code reads {FORMAT!r}/{FORMAT_VERSION}")
    if dataset is not None:
        expected = dataset_hash(_require_dataset(dataset))
        if manifest["dataset"]["meta_sha256"] != expected:
            raise DataPrepError(
                f"{path}: shards were written from a dataset with meta.json sha256 "
                f"{manifest['dataset']['meta_sha256']}, but {Path(dataset) / 'meta.json'} has sha256 {expected}; "
                "write the shards again")
    return manifest


def check_shards(folder: Path, manifest: dict[str, Any], corpus: str, *, verify: bool = True,
                 skip_corrupt: bool = False) -> tuple[list[Path], list[Path]]:
    """(good, bad) shard paths of `corpus`: each must exist with the manifest's size and, with
    `verify`, sha256. A bad shard is an error naming it and the manifest unless `skip_corrupt`."""
    if corpus not in manifest["corpora"]:
        raise DataPrepError(f"{Path(folder) / MANIFEST}: no corpus {corpus!r}; one of {', '.join(manifest['corpora'])}")
    good, bad = [], []
    for shard in manifest["corpora"][corpus]["shards"]:
        path = Path(folder) / shard["name"]
        if not path.is_file():
            problem = "missing"
        elif path.stat().st_size != shard["bytes"]:
            problem = f"{path.stat().st_size} bytes, the manifest says {shard['bytes']} (truncated or changed)"
        elif verify and sha256_file(path) != shard["sha256"]:
            problem = "sha256 differs from the manifest (file changed or corrupted)"
        else:
            good.append(path)
            continue
        message = f"{path}: {problem} (manifest {Path(folder) / MANIFEST})"
        if not skip_corrupt:
            raise DataPrepError(message)
        log.warning("skipping shard %s", message)
        bad.append(path)
    return good, bad


def _every(src: Iterator[Any], index: int, count: int) -> Iterator[Any]:
    """Items index, index+count, ... of `src` (a shard list split by rank or by worker)."""
    return islice(src, index, None, count)


def _derive_seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**62))


class CorpusStream:
    """One corpus's samples for one rank (and DataLoader worker) in one epoch.

    Shard order is permuted by (seed, epoch), the same on every rank, then split: shard i goes to
    rank i % world_size, then to worker (i // world_size) % num_workers (torch's DataLoader worker
    info when `worker` is None). Samples are shuffled in a buffer of `shuffle_buffer` seeded by
    (seed, epoch, rank, worker). `skipped` lists shards left out as corrupt (this process only);
    samples read from a shard before damage was found are kept.
    """

    def __init__(self, shards: list[Path], counts: dict[str, int], skipped: list[Path], *, rank: int,
                 world_size: int, worker: int | None, num_workers: int, shuffle: bool, shuffle_buffer: int,
                 seed: int, epoch: int, skip_corrupt: bool) -> None:
        urls = [str(p) for p in shards]
        if shuffle:
            urls = [urls[i] for i in np.random.default_rng([seed, epoch]).permutation(len(urls))]
        self.counts = counts
        # samples each rank reads this epoch (with one worker per rank): lets ranks agree on a step count
        self.rank_samples = [sum(counts[u] for u in urls[r::world_size]) for r in range(world_size)]
        self.skipped = list(skipped)
        self.skip_corrupt = skip_corrupt
        workersplitter = wds.split_by_worker if worker is None else partial(_every, index=worker, count=num_workers)
        pipeline = wds.WebDataset(urls, handler=self._on_error, shardshuffle=False,
                                  nodesplitter=partial(_every, index=rank, count=world_size),
                                  workersplitter=workersplitter).compose(self._decode)
        if shuffle and shuffle_buffer > 0:
            pipeline = pipeline.shuffle(shuffle_buffer, seed=_derive_seed(seed, epoch, rank, worker or 0))
        self.pipeline = pipeline

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.pipeline)

    def _on_error(self, exn: Exception) -> bool:
        """webdataset error handler: the shard reader re-calls it with the shard's url appended."""
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.counts), None)
        if url is None:
            raise exn
        message = f"{url}: unreadable WebDataset shard ({type(exn).__name__}: {exn.args[0]})"
        if not self.skip_corrupt:
            raise DataPrepError(message) from exn
        log.warning("skipping the rest of shard %s", message)
        self.skipped.append(Path(url))
        return True

    def _check_count(self, url: str | None, seen: int) -> None:
        if url is not None and Path(url) not in self.skipped and seen != self.counts[url]:
            raise DataPrepError(f"{url}: {seen} samples read, the manifest says {self.counts[url]}")

    def _decode(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Raw {__key__, __url__, json} records → sample dicts; each shard's sample count checked."""
        url, seen = None, 0
        for raw in src:
            if raw["__url__"] != url:
                self._check_count(url, seen)
                url, seen = raw["__url__"], 0
            seen += 1
            try:
                yield json.loads(raw["json"])
            except (KeyError, ValueError) as err:
                raise DataPrepError(f"{url}: sample {raw['__key__']}: no valid .json member ({err})") from None
        self._check_count(url, seen)


def read_corpus(folder: Path, corpus: str, *, rank: int = 0, world_size: int = 1, worker: int | None = None,
                num_workers: int = 1, shuffle: bool = True, shuffle_buffer: int = 1000, seed: int = 0,
                epoch: int = 0, dataset: Path | None = None, verify: bool = True,
                skip_corrupt: bool = False, exclude: frozenset[Path] = frozenset()) -> CorpusStream:
    """Read one corpus of a shard folder (see CorpusStream). The manifest is checked first: with
    `dataset`, against that processed dataset's hash; every shard's size and (with `verify`) sha256.
    Shards in `exclude` (found bad earlier, e.g. by a verifying `check_shards`) are left out."""
    if seed < 0 or epoch < 0:
        raise DataPrepError(f"seed ({seed}) and epoch ({epoch}) must be non-negative")
    if not 0 <= rank < world_size:
        raise DataPrepError(f"rank {rank} is outside world_size {world_size}")
    if worker is not None and not 0 <= worker < num_workers:
        raise DataPrepError(f"worker {worker} is outside num_workers {num_workers}")
    manifest = read_manifest(folder, dataset)
    good, bad = check_shards(folder, manifest, corpus, verify=verify, skip_corrupt=skip_corrupt)
    bad += [p for p in good if p in exclude]
    good = [p for p in good if p not in exclude]
    if len(good) < world_size:
        raise DataPrepError(f"{Path(folder) / MANIFEST}: corpus {corpus!r} has {len(good)} readable shards "
                            f"for {world_size} ranks; write it with fewer samples per shard")
    counts = {str(Path(folder) / s["name"]): s["samples"] for s in manifest["corpora"][corpus]["shards"]}
    return CorpusStream(good, counts, bad, rank=rank, world_size=world_size, worker=worker,
                        num_workers=num_workers, shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed,
                        epoch=epoch, skip_corrupt=skip_corrupt)
