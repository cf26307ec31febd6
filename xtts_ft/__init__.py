"""xtts-ft: fine-tune XTTS-v2 for new languages, voices and emotions.

Importing this package is cheap and side-effect free: the heavy model code (coqui-tts,
torch) is imported only by the stages and the inference module that need it.

Notebook entry points:

    from xtts_ft import compose, XttsSynthesizer
    cfg = compose("prepare", ["data=demo"])
"""

from xtts_ft import console as _console

# The `xtts_ft` logger's console for notebooks and the Python API: it steps aside where logging has one.
_console.install_fallback()

__all__ = ["compose", "XttsSynthesizer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import xtts_ft` costs nothing: coqui-tts takes 6-10 s to import, Hydra about
    # a second, and prepare's worker processes import xtts_ft.data.clips only.
    if name == "XttsSynthesizer":
        from xtts_ft.inference import XttsSynthesizer

        return XttsSynthesizer
    if name == "compose":
        from xtts_ft.config import compose

        return compose
    raise AttributeError(name)
