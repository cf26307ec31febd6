"""The text tokenizer of one loaded model: coqui's VoiceBpeTokenizer, taught the languages and
emotion tokens that `xtts-ft extend` added.

coqui-tts's tokenizer cleans only the languages it knows and raises NotImplementedError for
any other (a Wolof model cannot even encode its own language). `load_xtts` gives each model
it loads an `XttsTokenizer` instead: same ids, same `[lang]` + text + `[SPACE]` scheme, but
text in a language coqui does not know goes through our cleaner registry
(`xtts_ft.data.cleaners`), and an emotion token can stand in front of the text:

    [wo][happy]na[SPACE]nga[SPACE]def?

The change is to that model instance only; nothing in coqui-tts is patched. Users of plain
coqui-tts get the same behaviour with the two-line hook the model card shows.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

from xtts_ft.data.cleaners import CLEANERS, COQUI_LANGUAGES
from xtts_ft.data.text import (
    as_read,
    base_language,
    clean_text,
    coqui_cleaner,
    describe_characters,
    language_token,
    reader_missing,
    unknown_characters,
)
from xtts_ft.errors import BadValue

LEADING_TAG = re.compile(r"^\s*\[([^\[\]\s]+)\]\s*")
log = logging.getLogger(__name__)


class XttsTokenizer(VoiceBpeTokenizer):
    def __init__(
        self, vocab_file: str | Path, char_limits: Optional[Dict[str, int]] = None, emotion_tokens: Iterable[str] = ()
    ):
        super().__init__(vocab_file=str(vocab_file))
        self.char_limits.update(char_limits or {})
        self.emotion_tokens: List[str] = list(emotion_tokens)
        self.vocab = self.tokenizer.get_vocab()
        self.warned_unknown: set = (
            set()
        )  # (language, characters) already reported: one warning each, not one per sentence

    def languages(self) -> List[str]:
        """The languages whose `[lang]` token is in the vocabulary."""
        special = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        return sorted(
            t[1:-1]
            for t in special
            if t[1:-1] and t[1:-1] not in self.emotion_tokens and t not in ("[STOP]", "[UNK]", "[SPACE]", "[START]")
        )

    def preprocess_text(self, txt: str, lang: str) -> str:
        lang = base_language(lang)
        if lang in CLEANERS or (lang not in COQUI_LANGUAGES and lang != "ja"):
            return clean_text(txt, lang)  # ours: a registered cleaner, or the basic one
        if (
            lang in COQUI_LANGUAGES
        ):  # coqui's steps: its cleaners (a number they cannot spell stays digits), then zh/ko transliterated
            return as_read(coqui_cleaner(txt, lang), lang)
        try:
            return super().preprocess_text(txt, lang)  # ja: coqui's own romaji (cutlet)
        except ImportError as error:
            raise reader_missing(lang, error) from error

    def split_emotion(self, txt: str) -> Tuple[Optional[str], str]:
        """A leading `[tag]` naming one of this model's emotion tokens, and the rest of the text."""
        match = LEADING_TAG.match(txt)
        if match and match.group(1) in self.emotion_tokens:
            return match.group(1), txt[match.end() :]
        return None, txt

    def encode(self, txt: str, lang: str, emotion: Optional[str] = None, report_unknown: bool = True) -> List[int]:
        tagged, txt = self.split_emotion(txt)
        emotion = emotion or tagged
        lang = base_language(lang)
        if language_token(lang) not in self.vocab:
            raise BadValue(
                f"this model has no {language_token(lang)} token; its languages: {', '.join(self.languages())}"
            )
        if emotion is not None and emotion not in self.emotion_tokens:
            raise BadValue(
                f"this model has no [{emotion}] emotion token; its emotion tokens: {', '.join(self.emotion_tokens) or 'none'}",
                fix="add some with `xtts-ft extend emotions=[...]`, or use an emotion preset of the export",
            )
        self.check_input_length(txt, lang)
        txt = self.preprocess_text(txt, lang)
        prefix = language_token(lang) + (f"[{emotion}]" if emotion else "")
        ids = self.tokenizer.encode(prefix + txt.replace(" ", "[SPACE]")).ids
        if (
            report_unknown
        ):  # training passes False: it skips such clips, with their own reason, instead of reading them
            self.report_unknown(ids, txt, lang)
        return ids

    def unknown_characters(self, txt: str) -> List[str]:
        """The characters of (cleaned) text that this vocabulary encodes as [UNK]."""
        return unknown_characters(self.tokenizer, txt)

    def report_unknown(self, ids: List[int], txt: str, lang: str) -> None:
        """Warn once per language and set of characters when text encodes to [UNK]: the GPT never
        learned a sound for that token, so those characters are skipped or babbled, not read (coqui
        encodes them the same way, silently). Synthesis goes on: one stray symbol should not stop an
        evaluation of hundreds of sentences."""
        unk = self.vocab.get("[UNK]")
        if unk is None or unk not in ids:
            return
        unknown = "".join(self.unknown_characters(txt))
        if (lang, unknown) in self.warned_unknown:
            return
        self.warned_unknown.add((lang, unknown))
        log.warning(
            "%s text %r has characters this model's vocabulary lacks: %s — each is read as [UNK], a token "
            "the model has no sound for. Fix: write them with letters the model knows (or let the "
            "language's cleaner do it), or `xtts-ft extend` the model from a corpus that has them",
            language_token(lang),
            txt[:80],
            describe_characters(unknown) or "?",
        )


def tokenizer_for(model_dir: Path, sidecar: dict) -> XttsTokenizer:
    extension = sidecar.get("extension", {})
    return XttsTokenizer(
        Path(model_dir) / "vocab.json", extension.get("char_limits"), extension.get("emotion_tokens", ())
    )
