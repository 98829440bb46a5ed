"""Resuming a training run: an interrupted run continues to the uninterrupted run's results, a
schedule extended on resume runs exactly the new units, another config or dataset is refused naming
the difference. A smallest-schedule run is shared by the module; each test copies its output folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import METRICS, SMALL, copy_run, history_values, planted_raw, run_config, run_results
from trainer.checkpoint import CheckpointError
from trainer.pipeline import TrainingRun, train


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, planted_dataset, tiny_llama) -> Path:
    """The smallest default schedule (5 units: w0, l0, c0, ft0, ft1), trained once; copy before resuming."""
    out = tmp_path_factory.mktemp("small") / "run"
    train(run_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2}), progress=False)
    return out


@pytest.fixture(scope="module")
def other_split(tmp_path_factory) -> Path:
    """The planted data split with another seed: same counts, another dataset hash."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("data-other") / "planted"
    prepare(planted_raw(), out, seed=1)
    return out


# ---- resume -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_after_interruption_matches_uninterrupted(small_run, planted_dataset, tiny_llama, tmp_path,
                                                         monkeypatch) -> None:
    config = run_config(planted_dataset, tiny_llama, tmp_path / "run", **{**SMALL, "finetune.epochs": 2})
    calls: list[str] = []
    original = TrainingRun.run_unit

    class Killed(Exception):
        pass

    def interrupted(self, unit, index):
        calls.append(unit.tag)
        if len(calls) == 4:  # killed during the first finetuning epoch
            raise Killed
        return original(self, unit, index)

    def counted(self, unit, index):
        calls.append(unit.tag)
        return original(self, unit, index)

    monkeypatch.setattr(TrainingRun, "run_unit", interrupted)
    with pytest.raises(Killed):
        train(config, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(TrainingRun, "run_unit", counted)
    rows = train(config, start="resume", progress=False)
    assert calls == ["finetune-r000-e000", "finetune-r000-e001"]  # nothing finished is redone
    reference = run_results(small_run)
    assert history_values(run_results(tmp_path / "run")["history"]) == history_values(reference["history"])
    for key in METRICS:
        assert rows["CLLM4Rec"][key] == reference["models"]["CLLM4Rec"][key]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_more_finetuning_epochs_continues(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = copy_run(small_run, tmp_path / "run")
    before = run_results(out)["history"]
    train(run_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 3}), start="resume", progress=False)
    after = run_results(out)["history"]
    assert after[: len(before)] == before
    assert [h["unit"] for h in after[len(before):]] == ["finetune-r000-e002"]
    # the finetune phase run's step count (per-step MLflow metrics) continues from the checkpoint
    from trainer.checkpoint import find_latest

    state = json.loads((find_latest(out / "checkpoints") / "state.json").read_text())
    fine = [h for h in after if h["unit"].startswith("finetune")]
    assert state["phase_steps"] == {"group": "finetune", "steps": {
        prefix: sum(int(h[f"{prefix}_steps"]) for h in fine) for prefix in ("rec", "content")}}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_with_one_more_round_continues(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = copy_run(small_run, tmp_path / "run")
    before = run_results(out)["history"]
    train(run_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2, "pretrain.rounds": 2}),
          start="resume", progress=False)
    after = run_results(out)["history"]
    units = [h["unit"] for h in after]
    assert after[: len(before)] == before
    assert len(units) == len(set(units)), f"units redone: {units}"
    assert sorted(units[len(before):]) == ["cstep-r001-e000", "lstep-r001-e000"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_refuses_a_different_config_or_dataset(small_run, planted_dataset, other_split, tiny_llama,
                                                      tmp_path) -> None:
    out = copy_run(small_run, tmp_path / "run")
    history = run_results(out)["history"]
    base = {**SMALL, "finetune.epochs": 2}
    with pytest.raises(CheckpointError, match=r"pretrain\.lambda_c: checkpoint has 1\.0, current run has 0\.5"):
        train(run_config(planted_dataset, tiny_llama, out, **{**base, "pretrain.lambda_c": 0.5}), start="resume",
              progress=False)
    with pytest.raises(CheckpointError, match="dataset_hash"):
        train(run_config(other_split, tiny_llama, out, **base), start="resume", progress=False)
    assert run_results(out)["history"] == history  # nothing was trained or overwritten


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_refused_resume_keeps_the_run_config(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    out = copy_run(small_run, tmp_path / "run")
    saved = (out / "config.yaml").read_text(encoding="utf-8")
    config = run_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 2, "pretrain.lambda_c": 0.5})
    with pytest.raises(CheckpointError):
        train(config, start="resume", progress=False)
    assert (out / "config.yaml").read_text(encoding="utf-8") == saved


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_accepts_a_checkpoint_older_than_a_config_key(small_run, planted_dataset, tiny_llama, tmp_path) -> None:
    """A key added to the code after the checkpoint was written counts as equal when at its default."""
    import json

    import yaml

    from trainer.checkpoint import _write_complete, find_latest

    out = copy_run(small_run, tmp_path / "run")
    latest = find_latest(out / "checkpoints")
    config = yaml.safe_load((latest / "config.yaml").read_text())
    del config["data"]["shuffle_buffer"]
    (latest / "config.yaml").write_text(yaml.safe_dump(config))
    identity = json.loads((latest / "identity.json").read_text())
    (latest / "identity.json").write_text(json.dumps({**identity, "config_hash": "from-older-code"}))
    _write_complete(latest)
    train(run_config(planted_dataset, tiny_llama, out, **{**SMALL, "finetune.epochs": 3}), start="resume", progress=False)
    assert [h["unit"] for h in run_results(out)["history"]][-1] == "finetune-r000-e002"
