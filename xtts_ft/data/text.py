"""Text per language: `clean_text` (the one normalisation `prepare`, training and inference
apply) and how XTTS writes a language and its text as tokens (`language_token`, `token_ids`).

The cleaners themselves live in the registry `xtts_ft.data.cleaners` (one module per language).
Its public names are importable from here too, where model cards, the README and users' code
import them:

    from xtts_ft.data.text import clean_text, register_cleaner, language_letters
"""

from __future__ import annotations

import functools
import html
import logging
import re
import unicodedata

from xtts_ft.data.cleaners import (
    CLEANERS,
    COQUI_LANGUAGES,
    LETTERS,
    base_code,
    basic_cleaner,
    cleaner_name,
    language_letters,
    register_cleaner,
)
from xtts_ft.errors import RunRefused

# The registry's names are re-exported: `xtts_ft.data.text` is where they have always been imported from.
__all__ = [
    "CLEANERS",
    "COQUI_LANGUAGES",
    "LETTERS",
    "basic_cleaner",
    "cleaner_name",
    "language_letters",
    "register_cleaner",
    "clean_text",
    "base_language",
    "language_token",
    "token_ids",
    "unknown_characters",
    "as_read",
    "reader_missing",
]

log = logging.getLogger(__name__)

# "[happy]" in front of the text: an emotion (or language) token's name, lower-case (see `is_tag`).
LEADING_TAG = re.compile(r"^\s*(\[[^\[\]\s]+\])\s*")


def is_tag(tag: str) -> bool:
    """Whether a leading `[...]` names a token: a lower-case name starting with a letter (`[happy]`, `[bég]`,
    `[zh-cn]`); `[Ndiaye]` or `[5]` is text."""
    name = tag[1:-1]
    return name[:1].isalpha() and name == name.lower()


# An HTML character reference (&amp; &quot; &#39; &#x2019;) in text scraped from the web: without
# this the cleaners read "&amp;" as "and amp;".
HTML_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")


# Characters with no sound that word processors and web pages leave in text: zero-width space,
# word joiner, a byte-order mark inside the text, soft hyphen. Dropped, not read as [UNK].
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad"))
# Typographic quotes and the ellipsis as one character, written the way every vocabulary has them.
TYPOGRAPHIC = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2026": "..."}
)


def unescape_entities(text: str) -> str:
    """HTML character references read, each one as written (not the legacy forms without `;`), until
    none is left (`&amp;lt;` → `<`): cleaning the result again changes nothing."""
    for _ in range(4):
        if not HTML_ENTITY.search(text):
            break
        text = HTML_ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return text


def clean_text(text: str, language: str) -> str:
    language = base_code(language)
    text = unescape_entities(text).translate(INVISIBLE)
    if language in COQUI_LANGUAGES:  # punctuation there; in another orthography ‘ may be a letter (Uzbek o‘)
        text = text.translate(TYPOGRAPHIC)
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    tag = LEADING_TAG.match(text)
    if tag and is_tag(tag.group(1)):  # a control token is not text: kept as written, the rest cleaned
        rest = clean_text(text[tag.end() :], language)
        return tag.group(1) + rest if rest else ""
    if not text:
        return ""
    if language in CLEANERS:
        cleaned = CLEANERS[language](text)
    elif language in COQUI_LANGUAGES:
        cleaned = re.sub(r"\s+", " ", coqui_cleaner(text, language)).strip()
    else:
        cleaned = basic_cleaner(text)
    # Cleaning may have made a tag ("[Laughs] ok" lower-cased): cleaned again, so that cleaning clean text changes nothing.
    tag = LEADING_TAG.match(cleaned)
    return clean_text(cleaned, language) if tag and is_tag(tag.group(1)) else cleaned


NUMBER_PIECE = re.compile(r"(\d+(?:[.,]\d+)*)")


def coqui_cleaner(text: str, language: str) -> str:
    """coqui's multilingual cleaners. Its number expansion (num2words) fails on some text: any number in
    Hindi (num2words has no `hi`), numbers of 21+ digits in Turkish or 28+ in Spanish, "0th" in Polish.
    Then each number is cleaned on its own, and one that still fails is left as digits (said once per
    language): one sentence never stops a corpus or a synthesis."""
    from TTS.tts.layers.xtts.tokenizer import multilingual_cleaners

    try:
        return multilingual_cleaners(text, language)
    except (ArithmeticError, LookupError, NotImplementedError, ValueError, TypeError):
        pass
    joined = ""
    for piece in NUMBER_PIECE.split(text):
        core = piece.strip()  # coqui's cleaners strip: the spaces around a piece are kept as written
        try:
            cleaned = multilingual_cleaners(core, language) if core else ""
        except (ArithmeticError, LookupError, NotImplementedError, ValueError, TypeError):
            if language not in UNSPELLED_NUMBERS:
                UNSPELLED_NUMBERS.add(language)
                log.warning(
                    "some numbers in %r text are left as digits (e.g. %s): coqui's number expansion cannot "
                    "spell them; write them as words in the text to have them read",
                    language,
                    piece,
                )
            cleaned = core
        # A piece that now starts with a word where it started with a symbol ("50%" → "50" + "प्रतिशत") is spaced
        # from what it follows; one that starts as it did ("5वां", "2024,") stays joined, as written.
        glue = joined and cleaned and piece[:1] == core[:1] and cleaned[:1] != core[:1].lower()
        joined += (
            piece[: len(piece) - len(piece.lstrip())]
            + (" " if glue else "")
            + cleaned
            + (piece[len(piece.rstrip()) :] if core else "")
        )
    return re.sub(r"\s+", " ", joined).strip()


UNSPELLED_NUMBERS: set = set()  # languages whose unspellable numbers were reported


# Language → (what XTTS reads its text as, coqui-tts's extra that installs what makes it).
READ_AS = {
    "zh": ("pinyin", "coqui-tts[zh]"),
    "ko": ("romanized Hangul", "coqui-tts[ko]"),
    "ja": ("romaji", "coqui-tts[ja]"),
}


def as_read(text: str, language: str) -> str:
    """Cleaned text as XTTS's tokenizer finally reads it: Chinese as pinyin, Korean romanized, Japanese as
    romaji (coqui's own steps, after cleaning); any other language unchanged. Token counts and the
    vocabulary check must look at this, as training's tokenizer does."""
    language = base_language(language)
    if language not in READ_AS:
        return text
    from TTS.tts.layers.xtts import tokenizer as coqui

    try:
        if language == "zh":
            return coqui.chinese_transliterate(text)
        if language == "ko":
            return coqui.hangul_romanize(text)
        return coqui.japanese_cleaners(text, cutlet_romanizer())
    except ImportError as error:
        raise reader_missing(language, error) from error


def reader_missing(language: str, error: ImportError) -> RunRefused:
    """The error for a zh/ko/ja text whose romanizing package (pypinyin, hangul-romanize, cutlet) is not installed."""
    reading, packages = READ_AS[base_language(language)]
    return RunRefused(
        f"XTTS reads {language!r} text as {reading}, which needs a package not installed ({error}) "
        f"— fix: pip install '{packages}'"
    )


@functools.lru_cache(maxsize=1)
def cutlet_romanizer():
    import cutlet

    return cutlet.Cutlet()


def base_language(language: str) -> str:
    return language.split("-")[0]  # as written: prepare refuses an upper-case code of a known language


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


def describe_characters(characters) -> str:
    """Characters for a message: each as written, or as U+XXXX with its name when it would not show
    (a zero-width joiner, a control character, a space of another kind)."""

    def one(ch: str) -> str:
        if ch.isprintable() and not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Mn", "Me"):
            return ch
        return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed').lower()})"

    return " ".join(one(ch) for ch in characters)


def unknown_characters(tokenizer, text: str) -> list:
    """The characters of cleaned text that a `tokenizers` vocabulary encodes as [UNK] (sorted; none
    when it has no [UNK] token). Character by character is exact for BPE: a character missing from
    the vocabulary's alphabet is [UNK] whatever surrounds it."""
    unk = tokenizer.token_to_id("[UNK]")
    if unk is None:
        return []
    return sorted({ch for ch in text if not ch.isspace() and unk in tokenizer.encode(ch).ids})
