"""The console: how xtts-ft speaks to its user, in one place.

Every module logs through `logging.getLogger(__name__)`; nothing prints, but a command whose stdout is
its result (`--help`, `--cfg job`) and the CLI's last word on a failed command. One handler,
`ConsoleHandler`, shows the lines:

- an INFO line as it is, on stdout; a warning or an error prefixed `warning: ` / `error: `, on stderr
  (beside the CLI's `error: … — fix: …` and tqdm's bars);
- through `tqdm.write` once tqdm is loaded, so a progress bar is cleared and drawn again below the line,
  never broken by it;
- other libraries' INFO chatter left out (faster-whisper's "Processing audio with duration", httpx's
  requests, gradio, transformers): their warnings and errors still show.

Under Hydra (every stage verb), `conf/hydra/job_logging/xtts_ft.yaml` puts it on the root logger beside
the log file Hydra keeps in the run's folder (`runs/.hydra/<stage>/<time>/cli.log`: every line,
timestamped). Without Hydra (a notebook, the Python API, `xtts-ft demo`) the `xtts_ft` logger carries a
`FallbackHandler` (`install_fallback`, run when `xtts_ft` is imported) that shows our lines the same way
only while logging has no console of its own: like transformers' and huggingface_hub's default handler,
but it steps aside once the user (or Hydra) configures one, so no line is ever shown twice.
`logging.getLogger("xtts_ft").setLevel(logging.WARNING)` keeps only warnings and errors.

`progress(...)` is the tqdm bar of long work; there is none for nothing to do (a `0clip` bar says nothing).

Imports nothing but the standard library (tqdm only once it is loaded): `import xtts_ft` stays cheap.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Optional, TextIO

PACKAGE = "xtts_ft"
# Loggers whose INFO lines are ours to show: the package, a script run as __main__, and Hydra's own
# (a multirun's "Launching 2 jobs locally"). Any other logger is shown from WARNING up.
SHOWN_AT_INFO = (PACKAGE, "__main__", "hydra", "hydra_plugins")
PREFIXES = ((logging.ERROR, "error: "), (logging.WARNING, "warning: "))


class ConsoleFormatter(logging.Formatter):
    """The message alone for INFO; `warning: ` / `error: ` before a warning or an error."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = next((prefix for level, prefix in PREFIXES if record.levelno >= level), "")
        return prefix + text


def is_shown(record: logging.LogRecord) -> bool:
    """Ours at any level; another library's only from WARNING up."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in SHOWN_AT_INFO


def write_line(text: str, stream: TextIO) -> None:
    """One line on `stream`, through tqdm when it is loaded: a bar on the screen is cleared first
    and drawn again after the line (tqdm.write), so the two never share a line."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and hasattr(tqdm_module, "tqdm"):
        tqdm_module.tqdm.write(text, file=stream)
    else:
        stream.write(text + "\n")
    stream.flush()


class ConsoleHandler(logging.Handler):
    """The one console handler (see the module's docstring). Its streams are looked up at each line,
    not kept: a test's capture, a notebook's cell output or a redirect made later all get the line."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self.setFormatter(ConsoleFormatter())
        self.addFilter(is_shown)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            write_line(text, sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def shows_on_a_console(handler: logging.Handler) -> bool:
    """Whether a handler puts lines where the user reads them: ours, a stream handler on stdout/stderr
    (`logging.basicConfig`), or a kind we cannot see into (rich's, a queue: the user chose it). A file,
    a NullHandler or a capture into memory (pytest's) does not."""
    if isinstance(handler, ConsoleHandler):
        return True
    if isinstance(handler, logging.NullHandler):
        return False
    if isinstance(handler, logging.StreamHandler):
        consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        return not isinstance(handler, logging.FileHandler) and any(handler.stream is s for s in consoles)
    return True


class FallbackHandler(ConsoleHandler):
    """On the `xtts_ft` logger: shows a line only when no other handler on its way up (the user's,
    Hydra's) shows it on a console."""

    def handle(self, record: logging.LogRecord) -> bool:
        logger: Optional[logging.Logger] = logging.getLogger(record.name)
        while logger is not None:
            if any(h is not self and shows_on_a_console(h) for h in logger.handlers):
                return False
            logger = logger.parent if logger.propagate else None
        return super().handle(record)


def install_fallback() -> None:
    """Give the `xtts_ft` logger its fallback console (once) and INFO as its level unless one was set:
    a stage's result lines ("prepared 37 train + 3 eval clips") are INFO."""
    logger = logging.getLogger(PACKAGE)
    if not any(type(h).__name__ == FallbackHandler.__name__ for h in logger.handlers):  # once, even if reloaded
        logger.addHandler(FallbackHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, **options):
    """A tqdm bar over `iterable` (or to be `update`d up to `total`), on stderr; hidden when there is
    nothing to do (total 0), and left alone otherwise (tqdm's own `disable=None` hides it off a terminal
    only when asked)."""
    from tqdm import tqdm

    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    options["disable"] = options.get("disable", False) or total == 0
    return tqdm(iterable, total=total, **options)
