"""The command line never destroys what it did not write and answers bad input in one line (issue 24).

`prepare` replaces only a prepared dataset or an empty folder (or anything with --force), never its own
input or the current directory; `train` refuses a folder that holds a run unless told to resume or
overwrite it; `recommend`, `evaluate` and a dataset given by name fail early with a one-line error.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import tiny_overrides
from data_prep.errors import DataPrepError
from trainer import cli
from trainer.build import resolve_dataset
from trainer.run_folder import start_problem

REVIEWS = [{"reviewerID": f"u{u}", "asin": f"i{(u + k) % 6}", "unixReviewTime": 1000 + k, "summary": "ok"}
           for u in range(8) for k in range(4)]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A folder holding a small Amazon reviews file (every user has 4 reviews)."""
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "reviews.json").write_text("".join(json.dumps(r) + "\n" for r in REVIEWS), encoding="utf-8")
    return folder


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CLLM4REC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _prepare(raw: Path, *extra: str) -> list[str]:
    return ["prepare", "amazon", "--reviews", str(raw / "reviews.json"), "--kcore", "0", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert all(n in err[0] for n in needles), err[0]
    return err[0]


# ---- prepare: what --out / --name may replace --------------------------------------------------

def test_prepare_refuses_an_out_holding_its_input_even_with_force(raw, capsys) -> None:
    before = _snapshot(raw)
    for force in ([], ["--force"]):
        assert cli.main(_prepare(raw, "--out", str(raw), *force)) == 2
        _one_line_error(capsys, f"{raw}: holds the input", "reviews.json")
        assert cli.main(_prepare(raw, "--out", str(raw.parent), *force)) == 2
        _one_line_error(capsys, f"{raw.parent}: holds the input")
    assert _snapshot(raw) == before


def test_prepare_refuses_the_current_directory_and_leaves_no_temp_folder(raw, tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", "../w"):
        assert cli.main(_prepare(raw, "--out", out, "--force")) == 2
        _one_line_error(capsys, f"{out}: is (or holds) the current directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "w"]  # no `..tmp-*` or `.w.tmp-*` anywhere
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["../backbones/smollm2-135m", "a/b", "/abs/x", "..", "."])
def test_prepare_refuses_a_name_that_leaves_the_cache(raw, cache, capsys, name) -> None:
    backbone = cache / "backbones" / "smollm2-135m"
    backbone.mkdir(parents=True)
    (backbone / "model.safetensors").write_bytes(b"weights")
    assert cli.main(_prepare(raw, "--name", name)) == 2
    _one_line_error(capsys, f"--name) {name!r}: not a plain name")
    assert _snapshot(backbone) == {"model.safetensors": b"weights"} and not (cache / "datasets").exists()


def test_prepare_replaces_only_a_dataset_or_an_empty_folder_unless_forced(raw, tmp_path, capsys) -> None:
    empty, dataset, other = tmp_path / "empty", tmp_path / "dataset", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert cli.main(_prepare(raw, "--out", str(empty))) == 0
    assert cli.main(_prepare(raw, "--out", str(dataset))) == 0
    assert cli.main(_prepare(raw, "--out", str(dataset), "--seed", "1")) == 0  # a prepared dataset: replaced
    assert json.loads((dataset / "meta.json").read_text())["split"]["seed"] == 1
    capsys.readouterr()
    assert cli.main(_prepare(raw, "--out", str(other))) == 2
    _one_line_error(capsys, f"{other}: not empty and not a prepared dataset", "--force")
    assert _snapshot(other) == {"notes.txt": b"keep"}
    (tmp_path / "file").write_text("x")
    assert cli.main(_prepare(raw, "--out", str(tmp_path / "file"), "--force")) == 2
    _one_line_error(capsys, "file: is a file, not a folder")
    assert cli.main(_prepare(raw, "--out", str(other), "--force")) == 0
    assert (other / "meta.json").is_file() and not (other / "notes.txt").exists()


def test_failed_prepare_leaves_the_dataset_byte_identical(raw, tmp_path, capsys) -> None:
    out = tmp_path / "dataset"
    assert cli.main(_prepare(raw, "--out", str(out))) == 0
    before = _snapshot(out)
    (raw / "reviews.json").write_text('{"reviewerID": "u1"}\n')  # no asin: the read fails
    assert cli.main(_prepare(raw, "--out", str(out))) == 2
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "raw"]


def test_prepare_help_states_the_replace_rule_and_force(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["prepare", "amazon", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "replace only a prepared dataset or an empty folder" in text and "--force" in text


# ---- train: a folder that holds a run ------------------------------------------------------------

def _fake_run(out: Path) -> dict[str, bytes]:
    (out / "checkpoints" / "00001-warmup-r000-e000").mkdir(parents=True)
    (out / "checkpoints" / "00001-warmup-r000-e000" / "tables.safetensors").write_bytes(b"tables")
    (out / "config.yaml").write_text("name: old\n")
    return _snapshot(out)


def test_train_refuses_a_folder_holding_a_run(tmp_path, capsys) -> None:
    """Without --resume or --overwrite nothing is pruned or rewritten (refused before anything loads)."""
    out = tmp_path / "run"
    before = _fake_run(out)
    overrides = tiny_overrides(tmp_path / "no-dataset", tmp_path / "no-backbone", out)
    assert cli.main(["train", "--no-progress", *overrides]) == 2
    _one_line_error(capsys, f"{out}: holds a run already", "--resume", "--overwrite", "name=")
    assert _snapshot(out) == before


def test_resume_of_a_missing_run_is_an_error(tmp_path, capsys) -> None:
    out = tmp_path / "ghost"
    overrides = tiny_overrides(tmp_path / "no-dataset", tmp_path / "no-backbone", out)
    assert cli.main(["train", "--resume", "--no-progress", *overrides]) == 2
    _one_line_error(capsys, f"{out}: no run to resume", "--resume-or-start")
    assert not out.exists()


def test_start_modes(tmp_path) -> None:
    missing, held = tmp_path / "missing", tmp_path / "held"
    _fake_run(held)
    assert start_problem(missing, "new") is None and start_problem(held, "new") is not None
    assert start_problem(missing, "resume") is not None and start_problem(held, "resume") is None
    for start in ("resume-or-start", "overwrite"):
        assert start_problem(missing, start) is None and start_problem(held, start) is None


@pytest.mark.parametrize(("argv", "start"), [
    (["train"], "new"), (["train", "--resume"], "resume"), (["train", "--resume-or-start"], "resume-or-start"),
    (["demo", "--overwrite"], "overwrite"), (["demo", "--resume"], "resume"),
    (["sweep", "lambda_c=1,2", "--resume"], "resume-or-start"), (["sweep", "lambda_c=1,2", "--overwrite"], "overwrite"),
    (["reproduce", "--resume"], "resume-or-start"), (["reproduce"], "new"),
])
def test_start_flags_parse(argv, start) -> None:
    assert cli.build_parser().parse_args(argv).start == start


def test_resume_and_overwrite_exclude_each_other(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["train", "--resume", "--overwrite"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overwrite_removes_the_old_run_first(planted_dataset, tiny_llama, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    (out / "stale.txt").write_text("old")
    overrides = tiny_overrides(planted_dataset, tiny_llama, out, **{
        "pretrain.warmup_epochs": 1, "pretrain.rounds": 1, "finetune.epochs": 1, "data.reviews": False,
        "baselines.multivae": False, "baselines.ease": False})
    assert cli.main(["train", "--overwrite", "--no-progress", *overrides]) == 0
    assert not (out / "stale.txt").exists() and not (out / "checkpoints" / "00001-warmup-r000-e000").exists()
    assert (out / "results.json").is_file() and "name: old" not in (out / "config.yaml").read_text()


# ---- recommend, evaluate, data.dataset: one-line errors -----------------------------------------

def test_recommend_out_directory_is_refused_before_inference(tmp_path, monkeypatch, capsys) -> None:
    import trainer.serving

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(trainer.serving, "recommend_saved", never)
    assert cli.main(["recommend", "--model", str(tmp_path / "model"), "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, f"--out {tmp_path}: is a directory")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["recommend", "--model", str(tmp_path / "model"), "--out", "."]) == 2
    _one_line_error(capsys, "--out .: is a directory")


def test_missing_model_is_called_missing(tmp_path, capsys) -> None:
    for command in ("evaluate", "recommend", "diagnose"):
        assert cli.main([command, "--model", str(tmp_path / "nope" / "model")]) == 2
        line = _one_line_error(capsys, f"{tmp_path / 'nope' / 'model'}: not found")
        assert "incomplete" not in line
    (tmp_path / "model").write_text("not a folder")
    assert cli.main(["evaluate", "--model", str(tmp_path / "model")]) == 2
    _one_line_error(capsys, "model: is a file, not a folder")
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "COMPLETE").write_text("")
    assert cli.main(["evaluate", "--model", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, f"run: a run folder, not a saved model; its model is {tmp_path / 'run' / 'model'}")


def test_a_dataset_prepared_by_name_resolves_to_the_cache_folder_of_its_split(raw, cache, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(_prepare(raw, "--name", "beauty")) == 0
    assert resolve_dataset("beauty") == cache / "datasets" / "beauty"
    capsys.readouterr()
    assert cli.main(["info", "beauty"]) == 0 and str(cache / "datasets" / "beauty") in capsys.readouterr().out
    with pytest.raises(DataPrepError, match=rf"data\.dataset=nothere: .*looked in {cache / 'datasets' / 'nothere'}"):
        resolve_dataset("nothere")
    assert resolve_dataset(str(raw)) == raw  # a path is taken as it is
    with pytest.raises(DataPrepError, match=r"data\.dataset=beauty: .*beauty holds split seed 0, not data\.split_seed"
                                            r"=1; prepare that split with `cllm4rec prepare … --name beauty --seed 1`"):
        resolve_dataset("beauty", split_seed=1)  # another split of a named dataset is its own folder
    assert cli.main(_prepare(raw, "--name", "beauty", "--seed", "1")) == 0
    assert resolve_dataset("beauty", split_seed=1) == cache / "datasets" / "beauty-split1"
    shutil.copytree(cache / "datasets" / "beauty-split1", cache / "datasets" / "beauty-split2")  # a renamed folder
    with pytest.raises(DataPrepError, match=r"beauty-split2 holds split seed 1, not data\.split_seed=2"):
        resolve_dataset("beauty", split_seed=2)
    shutil.copytree(cache / "datasets" / "beauty-split1", cache / "datasets" / "beauty-cold")  # a name of its own
    cold = cache / "datasets" / "beauty-cold"
    assert resolve_dataset("beauty-cold", split_seed=1) == resolve_dataset("beauty-cold") == cold
