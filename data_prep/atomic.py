"""Write a folder whole or not at all, and checksum files.

`atomic_folder(dest)` yields a fresh sibling temp folder; on success the old `dest` is renamed aside,
the new one renamed in, and the old one deleted. A crash at any point leaves one complete folder:
the next call (or `recover`) puts an aside copy back if `dest` is missing and removes leftovers.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, which files written here respect


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def recover(dest: Path) -> None:
    """Undo what an interrupted `atomic_folder` left next to `dest`.

    If `dest` is missing but an aside copy (`.NAME.old-*`) exists, it is renamed back; temp folders
    and other aside copies are deleted.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"))
    if not dest.exists() and olds:
        os.rename(olds.pop(), dest)
    for leftover in olds + sorted(dest.parent.glob(f".{dest.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _folder_lock(dest: Path) -> Iterator[None]:
    """Exclusive lock on dest's parent folder (flock on the folder itself: no lock files left)."""
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temp folder to fill; on normal exit it replaces `dest`, on error it is deleted."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(dest):
        recover(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        aside = None
        if dest.exists():
            aside = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
            os.rename(dest, aside)
        os.rename(tmp, dest)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path in `path`'s folder to write; on normal exit it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same folder and an atomic rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
