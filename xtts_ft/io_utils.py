"""Atomic file writes: a reader never sees a half-written manifest, checkpoint or export."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def torch_save(obj: Any, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    An existing directory at `path` is replaced only after the new one is fully written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        move_into_place(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(built: Path, path: Path) -> None:
    """Rename the finished directory `built` to `path`; an existing `path` is replaced only now."""
    os.chmod(built, 0o755)  # mkdtemp creates 0700
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(built, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, path)


def file_hash(*paths: Path) -> str:
    """A digest of the files' bytes, read in 1 MB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class FileLock:
    """An exclusive lock held while one process writes a directory (a training run, a prepared
    dataset). `busy` is the error raised when another process holds it, with `{holder}` filled.

    flock locks belong to the open file: the kernel releases them when the process ends, so a
    crashed or killed process never leaves the directory stuck.
    """

    def __init__(self, path: Path, busy: str):
        self.path, self.busy = Path(path), busy
        self._file: Optional[IO] = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RuntimeError(self.busy.format(holder=holder)) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextmanager
def resumable_dir(path: Path, key: str) -> Iterator[Path]:
    """Build a directory in `.<name>.partial` beside `path` and move it into place when complete.

    Unlike `atomic_dir`, an interrupted build is kept: the next call with the same `key` (a digest
    of what the content depends on) continues in it, and one with another key starts it afresh.
    Either way `path` itself only ever holds a complete directory. One process at a time.
    """
    path = Path(path)
    work = path.with_name(f".{path.name}.partial")
    with FileLock(path.with_name(f".{path.name}.lock"), f"{path} is being written by another process ({{holder}}); wait for it to finish"):
        key_file = work / ".key"
        if work.exists() and not (key_file.is_file() and key_file.read_text() == key):
            shutil.rmtree(work)  # another input's leftovers
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
        yield work
        key_file.unlink()
        move_into_place(work, path)

