"""Text normalisation per language: one registry used by `prepare` (and later by training and inference).

Languages coqui-tts knows use its multilingual cleaners (lower-case, numbers, abbreviations,
symbols spelled out). Any other language gets a registered cleaner, or the basic one
(Unicode NFC, lower-case, collapsed spaces) — never coqui's NotImplementedError.

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


def language_letters(language: str) -> str:
    """The characters a registered cleaner declared for its language ("" when none is registered)."""
    return LETTERS.get(base_language(language), "")


def basic_cleaner(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    return re.sub(r"\s+", " ", text).strip()


def cleaner_name(language: str) -> str:
    language = language.split("-")[0]
    if language in CLEANERS:
        return CLEANERS[language].__name__
    return "coqui_multilingual" if language in COQUI_LANGUAGES else "basic"


LEADING_TAG = re.compile(r"^\s*(\[[^\[\]\s]+\])\s*")  # "[happy]" in front of the text: an emotion token


def clean_text(text: str, language: str) -> str:
    language = language.split("-")[0]
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    tag = LEADING_TAG.match(text)
    if tag:  # a control token is not text: kept as written, the rest cleaned
        rest = clean_text(text[tag.end():], language)
        return tag.group(1) + rest if rest else ""
    if not text:
        return ""
    if language in CLEANERS:
        return CLEANERS[language](text)
    if language in COQUI_LANGUAGES:
        from TTS.tts.layers.xtts.tokenizer import multilingual_cleaners

        return re.sub(r"\s+", " ", multilingual_cleaners(text, language)).strip()
    return basic_cleaner(text)


def base_language(language: str) -> str:
    return language.split("-")[0]


def language_token(language: str) -> str:
    """The `[lang]` token XTTS puts before the text ("zh" is written "zh-cn")."""
    language = base_language(language)
    return "[zh-cn]" if language == "zh" else f"[{language}]"


def token_ids(tokenizer, text: str, language: str) -> list:
    """Ids as XTTS encodes already-cleaned text: `[lang]` + text with spaces as [SPACE].

    Goes through the `tokenizers` object directly, so it works for languages coqui's
    VoiceBpeTokenizer.encode refuses.
    """
    return tokenizer.encode(f"{language_token(language)}{text}".replace(" ", "[SPACE]")).ids


# Cleaners for languages coqui does not know register themselves on import.
from xtts_ft.data import wolof  # noqa: E402,F401  (registers "wo")
