"""xtts-ft: fine-tune XTTS-v2 for new languages, voices and emotions.

Importing this package is cheap and side-effect free: the heavy model code (coqui-tts,
torch) is imported only by the stages and the inference module that need it.

Notebook entry points:

    from xtts_ft import compose, XttsSynthesizer
    cfg = compose("prepare", ["data=demo"])
"""

from xtts_ft.config import compose

__all__ = ["compose", "XttsSynthesizer"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import xtts_ft` does not pay the 6-10 s coqui-tts import.
    if name == "XttsSynthesizer":
        from xtts_ft.inference import XttsSynthesizer

        return XttsSynthesizer
    raise AttributeError(name)
