"""The user's mistakes, by type: what `xtts-ft` prints as one line (`error: <what> — fix: <how>`).

A `UserError` is raised on purpose, for a mistake the user can fix: a setting out of range, a file
that is missing or malformed, a language the model does not speak, a package left out. Its message
names the file, line or setting; its `fix` (or the message's own "fix: ...") says what to do.
Anything else is a bug and keeps its traceback.

Each kind also derives from the built-in exception a Python caller would expect (`BadValue` is a
`ValueError`, `MissingFile` a `FileNotFoundError`, ...), so `except ValueError` in a notebook keeps
catching what it caught before these types existed.
"""

from __future__ import annotations

from typing import Optional


class UserError(Exception):
    """A mistake of the user's, raised on purpose; `fix` says how to correct it (None: the
    message carries its own fix, or the CLI's generic one applies)."""

    def __init__(self, message: str, fix: Optional[str] = None):
        super().__init__(message)
        self.fix = fix


class BadValue(UserError, ValueError):
    """A setting, an argument or a file's content that the command cannot use."""


class MissingFile(UserError, FileNotFoundError):
    """A path the user named (or a stage's input the user must produce first) is not there."""


class FileInTheWay(UserError, FileExistsError):
    """An output would replace something the user did not name as this command's output."""


class MissingPackage(UserError, ImportError):
    """An optional package (an extra of xtts-ft or coqui-tts) is needed and not installed."""


class RunRefused(UserError, RuntimeError):
    """A run cannot go on as asked: its lock is held, a resume does not match, training diverged
    under the user's settings, the Hub cannot be reached."""


class ConfigValueError(BadValue):
    """A composed config holds a value its stage cannot run with."""


class DiskFull(UserError, OSError):
    """A write failed for want of space: names the file, the space it needed and the space free
    (`xtts_ft.io_utils.disk_full_error`)."""
