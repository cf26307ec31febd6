"""The text-cleaner registry: which cleaner each language's text goes through, and the letters
a cleaner declares for its language. One module per language beside this one (`wolof.py`)
holds its cleaner and letters and imports nothing of the registry; the registry registers
them explicitly at the bottom of this file, so importing one never imports the other back.

Languages coqui-tts knows use its multilingual cleaners (lower-case, numbers, abbreviations,
symbols spelled out). Any other language gets a registered cleaner, or the basic one
(Unicode NFC, lower-case, collapsed spaces) — never coqui's NotImplementedError.
`xtts_ft.data.text.clean_text` is the entry point that applies them. A user's own cleaner:

    from xtts_ft.data.text import register_cleaner

    @register_cleaner("wo", letters="abcdefg...")   # the letters its cleaned text is written in
    def wolof(text: str) -> str: ...

A cleaner declares its language's letters so that `extend` gives every one of them a token,
including letters the corpus happens not to contain.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Dict

from xtts_ft.data.cleaners import wolof

# The languages coqui-tts 0.28's VoiceBpeTokenizer.preprocess_text cleans with multilingual_cleaners.
COQUI_LANGUAGES = {"ar", "cs", "de", "en", "es", "fr", "hi", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko"}
CLEANERS: Dict[str, Callable[[str], str]] = {}
LETTERS: Dict[str, str] = {}  # language → the characters its cleaned text may contain


def register_cleaner(language: str, letters: str = ""):
    def decorator(function: Callable[[str], str]) -> Callable[[str], str]:
        CLEANERS[language] = function
        LETTERS[language] = letters
        return function

    return decorator


def base_code(language: str) -> str:
    """A language code without its region, as the cleaners are registered: "wo" for wo, wo-SN, wo_SN or WO."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


def language_letters(language: str) -> str:
    """The characters a registered cleaner declared for its language ("" when none is registered)."""
    return LETTERS.get(base_code(language), "")


def basic_cleaner(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    return re.sub(r"\s+", " ", text).strip()


def cleaner_name(language: str) -> str:
    language = base_code(language)
    if language in CLEANERS:
        return CLEANERS[language].__name__
    return "coqui_multilingual" if language in COQUI_LANGUAGES else "basic"


# The languages coqui does not know that have a cleaner of their own.
register_cleaner("wo", letters=wolof.LETTERS)(wolof.wolof_cleaner)
