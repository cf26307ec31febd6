"""Atomic file writes: a reader never sees a half-written manifest, checkpoint or export, and a
power cut never leaves a renamed-but-empty file; a write that fails for want of space says so in
one line (`DiskFull`: the file, the space it needed, the space free), and a stage can warn before
it starts when what it will write does not fit (`check_free_space`); locks: one writer of a
directory, or its readers."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional

from xtts_ft.errors import DiskFull, RunRefused

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(
    path: Path, need_bytes: Optional[int] = None, before_replace: Optional[Callable[[], None]] = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    `before_replace` runs once the new file is complete and on disk, just before the rename (a
    rotation: keeping the file it replaces). A block that fails for want of space raises
    `DiskFull`, naming `path`, `need_bytes` (what the file needed, where the caller knows) and the
    space free once the partial file is removed.
    """
    path = Path(path)
    with out_of_space_named(path, need_bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
            fsync_file(tmp_path)  # the bytes reach the disk before the name points at them
            if before_replace is not None:
                before_replace()
            os.replace(tmp_path, path)
            fsync_file(path.parent)  # and the rename itself survives a power cut
        finally:
            tmp_path.unlink(missing_ok=True)


# torch.save on a full disk raises a RuntimeError of its zip writer ("[enforce fail at
# inline_container.cc:672] . unexpected pos 8065280 vs 8065168", or "PytorchStreamWriter failed
# writing file data/0: file write failed"), which never says "disk": the free space tells.
TORCH_WRITER_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed")


def free_bytes(path: Path) -> int:
    """The space free to this user on the file system that holds `path` (or would, once created)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human_bytes(count: float) -> str:
    """1.8 GB, 250.0 MB, 12 kB: the size a person reads (decimal units, as `df -H` prints them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} {unit}" if unit in ("B", "kB") else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) dict/list/tuple, each storage counted once: about
    what torch.save writes for it (plus a little per tensor for the archive's records)."""
    import torch

    seen, total = set(), 0

    def walk(item: Any) -> None:
        nonlocal total
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes(), item.device.type)
            if key not in seen:
                seen.add(key)
                total += storage.nbytes() + 64  # the archive aligns each record to 64 bytes
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                walk(value)

    walk(obj)
    return total


def note_failure_space(error: BaseException, partial: Path) -> None:
    """Record on a failed build's error the space free and the bytes it had written, before its partial
    output is removed (then the disk no longer looks full, and what was written is gone)."""
    try:
        error.free_at_failure = free_bytes(partial)
        error.written_at_failure = files_bytes(p for p in Path(partial).rglob("*"))
    except (AttributeError, OSError):  # an exception type without a __dict__, a folder already gone
        pass


def is_out_of_space(error: BaseException, path: Path, need_bytes: Optional[int] = None) -> bool:
    """The error is a write that failed for want of space: ENOSPC/EDQUOT from the system, or
    torch's zip writer failing while less than `need_bytes` (or under 1 MB) is free."""
    if isinstance(error, DiskFull):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError) and any(s in str(error) for s in TORCH_WRITER_FAILURES):
        free = getattr(error, "free_at_failure", None)
        return (free_bytes(Path(path).parent) if free is None else free) < max(need_bytes or 0, 1 << 20)
    return False


def disk_full_error(
    path: Path, need_bytes: Optional[int], what: str = "", intact: str = "", fix: str = "", written: int = 0
) -> DiskFull:
    """The one line a write that ran out of space prints: the file, the space it needed (or, where
    unknown, more than the `written` bytes it had written when the disk filled) and the space free,
    what is still intact, and the fix (by default: free space, then run the same command)."""
    path = Path(path)
    free = free_bytes(path.parent)
    if need_bytes:
        needed = f"it needs about {human_bytes(need_bytes)}"
    else:
        needed = (
            f"it needs more than the {human_bytes(written)} written when the disk filled"
            if written
            else "it needs more"
        )
    message = f"no space left to write {path}{f' ({what})' if what else ''}: {needed}, {human_bytes(free)} free there"
    if intact:
        message += f"; {intact}"
    error = DiskFull(
        message, fix=fix or "free space on that disk (or write elsewhere), then run the same command again"
    )
    # (not OSError's filename/errno: set, they would replace the message in str(error))
    error.path, error.need_bytes, error.free_bytes = path, need_bytes, free
    return error


@contextmanager
def out_of_space_named(path: Path, need_bytes: Optional[int] = None, what: str = "") -> Iterator[None]:
    """A write in the block that fails for want of space raises `DiskFull` naming `path`, instead of
    the system's ENOSPC or torch's "unexpected pos"; any other failure goes through unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError) as error:
        if not is_out_of_space(error, path, need_bytes):
            raise
        written = getattr(error, "written_at_failure", 0)
        raise disk_full_error(getattr(error, "filename", None) or path, need_bytes, what, written=written) from error


def check_free_space(path: Path, need_bytes: int, what: str, fix: str = "") -> bool:
    """Warn (one line) when `need_bytes` will not fit in the space free where `path` goes; returns
    whether it fits. Called before long work, so that a full disk is foreseen, not met halfway."""
    free = free_bytes(path)
    if need_bytes <= free:
        return True
    log.warning(
        "%s will write about %s in %s but only %s is free there: it will stop on a full disk — %s",
        what,
        human_bytes(need_bytes),
        path,
        human_bytes(free),
        fix or "free space there, or write elsewhere",
    )
    return False


def files_bytes(paths: Iterable[Path]) -> int:
    """The sizes of the files among `paths` that exist (the rest count nothing)."""
    total = 0
    for path in paths:
        try:
            found = os.stat(path)
        except OSError:
            continue
        total += found.st_size if os.path.isfile(path) else 0
    return total


def fsync_file(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Flush every file written on `path`'s filesystem (syncfs): one call, however many files a
    built directory holds (a prepared dataset's thousands of clips), before it is renamed into place."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()  # no syncfs (not Linux): flush everything
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, need_bytes=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def torch_save(obj: Any, path: Path, before_replace: Optional[Callable[[], None]] = None) -> None:
    """torch.save, atomically (`atomic_path`: a full disk is a `DiskFull` naming the file and sizes)."""
    import torch

    with atomic_path(path, need_bytes=tensor_bytes(obj) + (1 << 16), before_replace=before_replace) as tmp:
        torch.save(obj, tmp)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    An existing directory at `path` is replaced only after the new one is fully written.
    """
    path = Path(path)
    # A write inside that runs out of space names its file, and the space free once the partial build is gone.
    with out_of_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            move_into_place(tmp, path)
        except (OSError, RuntimeError) as error:
            note_failure_space(error, tmp)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(built: Path, path: Path) -> None:
    """Rename the finished directory `built` to `path`; an existing `path` is replaced only now."""
    os.chmod(built, 0o755)  # mkdtemp creates 0700
    sync_filesystem(built)  # every file in it is on disk before the finished name points at it
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(built, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, path)
    fsync_file(path.parent)


def file_hash(*paths: Path) -> str:
    """A digest of the files' bytes, read in 1 MB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


LOCK_LOOKS = 10  # × 50 ms


class FileLock:
    """A lock on a directory held while one process writes it (exclusive: a training run, a dataset
    being prepared) or while processes read it (`shared=True`: training runs reading a dataset, which
    a writer must then not replace). `busy` is the error raised when a writer holds it and
    `busy_readers` the one when readers do, each with `{holder}` filled: who holds it (`label`,
    pid, host), read from the lock file.

    flock locks belong to the open file: the kernel releases them when the process ends, so a
    crashed or killed process never leaves the directory stuck.
    """

    def __init__(
        self, path: Path, busy: str, shared: bool = False, label: str = "", busy_readers: Optional[str] = None
    ):
        self.path, self.busy, self.shared, self.label = Path(path), busy, shared, label
        self.busy_readers = busy_readers or busy
        self._file: Optional[IO] = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        me = f"pid {os.getpid()} on {socket.gethostname()}"
        line = f"{self.label} ({me})\n" if self.label else f"{me}\n"
        # Readers only ever share the lock (taking it exclusively, even for a moment, would let two
        # ranks of one torchrun refuse each other); their lines pile up until a writer truncates the
        # file, and `live_holders` leaves out those of processes that have ended.
        for _ in range(LOCK_LOOKS):
            if self.shared:
                if try_flock(f, fcntl.LOCK_SH):
                    f.write(line)  # append mode: beside the other readers
                    f.flush()
                    break
            elif try_flock(f, fcntl.LOCK_EX):
                f.seek(0)
                f.truncate()  # nobody else holds it: earlier holders' lines are history
                f.write(line)
                f.flush()
                break
            elif try_flock(f, fcntl.LOCK_SH):  # readers hold it, and a writer must not replace what they read
                self._refuse(f, self.busy_readers)
            time.sleep(0.05)
        else:
            self._refuse(f, self.busy)
        self._file = f
        return self

    def _refuse(self, f: IO, message: str) -> None:
        f.seek(0)
        holder = "; ".join(live_holders(f.read())) or "another process"
        f.close()
        raise RunRefused(message.format(holder=holder)) from None

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            # The last holder to leave clears the file (a reader can tell it is the last when it can take
            # the lock exclusively), so a process that reads or writes again later is not named twice.
            if not self.shared or try_flock(self._file, fcntl.LOCK_EX):
                self._file.truncate(0)
                self._file.flush()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def tensors_hash(*state_dicts: dict, extra: str = "") -> str:
    """A hash of weights in memory (names and bytes, in name order): the same weights give the
    same hash wherever they were loaded from (a training state, a checkpoint, a model.pth)."""
    import torch

    digest = hashlib.blake2b(extra.encode(), digest_size=16)
    for state in state_dicts:
        for name in sorted(state):
            tensor = state[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def try_flock(f: IO, operation: int) -> bool:
    try:
        fcntl.flock(f, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def live_holders(text: str) -> list:
    """The lock file's holder lines, without those of processes on this host that have ended (a
    reader that left while others still read keeps its line until a writer truncates the file)."""
    here = socket.gethostname()
    lines = []
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        match = re.search(r"pid (\d+) on (\S+?)\)?$", line)
        if match and match.group(2) == here and not pid_alive(int(match.group(1))):
            continue
        lines.append(line)
    return lines


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def dir_lock_path(path: Path) -> Path:
    """The lock file of a directory: `.<name>.lock` beside it (outside it, so replacing the
    directory does not replace its lock)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def resumable_dir(path: Path, key: str) -> Iterator[Path]:
    """Build a directory in `.<name>.partial` beside `path` and move it into place when complete.

    Unlike `atomic_dir`, an interrupted build is kept: the next call with the same `key` (a digest
    of what the content depends on) continues in it, and one with another key starts it afresh.
    Either way `path` itself only ever holds a complete directory. One process at a time.
    """
    path = Path(path)
    work = path.with_name(f".{path.name}.partial")
    busy_readers = (
        f"{path} is in use by {{holder}}; it is not replaced while in use: wait for that to finish, "
        "or build it under another name (e.g. data.name=...)"
    )
    with FileLock(
        dir_lock_path(path),
        f"{path} is being written by another process ({{holder}}); wait for it to finish",
        busy_readers=busy_readers,
    ):
        key_file = work / ".key"
        if work.exists() and not (key_file.is_file() and key_file.read_text() == key):
            shutil.rmtree(work)  # another input's leftovers
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
        with out_of_space_named(path):  # what was written so far stays for the next run to continue
            try:
                yield work
                key_file.unlink()
                move_into_place(work, path)
            except (OSError, RuntimeError) as error:
                note_failure_space(error, work)
                raise
