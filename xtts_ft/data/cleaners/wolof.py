"""The Wolof text cleaner (language code `wo`) and the letters Wolof is written in; the registry
in `xtts_ft.data.cleaners` registers them (this module imports nothing of it).

coqui-tts has no Wolof: its tokenizer raises NotImplementedError. This cleaner gives Wolof
text the same treatment coqui gives its own languages: lower-case, abbreviations and
symbols spelled out, numbers written as Wolof words, quotes and brackets removed, spaces
collapsed. It is idempotent (cleaning clean text changes nothing), because prepare cleans
the manifest and training/inference clean again.

Numbers follow the standard orthography (CLAD; the spelling of the `galsenai/wolof_tts`
transcripts): a base-5 system up to ten, then tens and hundreds built by multiplication
("ñaar-fukk" 20, "ñetti téeméer" 300) and addition with "ak" ("fukk ak juróom-benn" 16).
"""

from __future__ import annotations

import re
import unicodedata

UNITS = ["", "benn", "ñaar", "ñett", "ñeent", "juróom", "juróom-benn", "juróom-ñaar", "juróom-ñett", "juróom-ñeent"]
# 30 has its own word; the other tens multiply "fukk" (ten).
TENS = {1: "fukk", 2: "ñaar-fukk", 3: "fanweer"}
SCALES = [(10**9, "miliyaar"), (10**6, "tamndareet"), (1000, "junni"), (100, "téeméer")]
MAX_NUMBER = 10**12 - 1  # beyond this digits are read one by one

# Written forms common in Senegalese Wolof text (borrowed from French), matched as whole words
# case-insensitively, an abbreviation's own dot included. Extend the table for a corpus's habits.
ABBREVIATIONS = {"dr": "doktoor", "mme": "madaam", "n°": "nimero", "nº": "nimero", "etc": "ak yeneen"}
# "No 5" / "no. 5" is a number's label only before a number: "no" alone is left as written.
NUMERO = re.compile(r"(?<![^\W\d_])no\.?\s?(?=\d)", flags=re.IGNORECASE)  # nº and n° are in ABBREVIATIONS
# Spaces on both sides: "10°C" reads "degre c", not "degrec" (spaces are collapsed afterwards).
# Currencies by their own names (extend for a corpus's habits; FCFA and CFA are written in letters already).
SYMBOLS = {
    "%": " ci téeméer ",
    "&": " ak ",
    "+": " ak ",
    "=": " yem ak ",
    "€": " euro ",
    "$": " dolaar ",
    "°": " degre ",
    "£": " pound ",
    "¥": " yen ",
    "₦": " naira ",
}
CURRENCIES = "$€£¥₦"
# Kept: the sentence punctuation XTTS sees in every language, and the apostrophe/hyphen inside words.
KEPT_PUNCTUATION = set(".,;:!?'-")
# The apostrophe as keyboards and word processors write it: curly quotes, the modifier letter
# (ʼ, a "letter" to Python, so it would pass as one and reach the tokenizer as [UNK]), accents.
APOSTROPHES = str.maketrans({c: "'" for c in "’‘ʼʻ´`ꞌ"})
# The CLAD orthography's letters (lower case, as cleaned), with the accented vowels and the
# French-borrowed letters common in Senegalese writing: ŋ, ñ, ë and the rest get a token from
# `extend` even when a corpus lacks them.
LETTERS = "aàbcdeéëfghijklmnñŋoópqrstuwxyç" + "".join(sorted(KEPT_PUNCTUATION))


def multiplier(n: int) -> str:
    """The form of n that multiplies a scale word: "ñaari téeméer" (two hundred)."""
    return number_to_words(n) + "i"


def number_to_words(n: int) -> str:
    if n < 0:
        return "mines " + number_to_words(-n)
    if n == 0:
        return "tus"
    parts = []
    for value, word in SCALES:
        count, n = divmod(n, value)
        if count:
            parts.append(word if count == 1 else f"{multiplier(count)} {word}")
    tens, units = divmod(n, 10)
    if tens:
        parts.append(TENS.get(tens) or f"{UNITS[tens]}-fukk")
    if units:
        parts.append(UNITS[units])
    return " ak ".join(parts)


def spell_number(match: re.Match) -> str:
    written = match.group(0)
    sign = "mines " if written[0] in "-−" else ""
    written = written.lstrip("-−")
    if THOUSANDS.fullmatch(written):  # 1 000 000 / 1.000.000 (,5): the separators go
        written = written.replace(" ", "").replace(".", "")
    elif ENGLISH_THOUSANDS.fullmatch(written):  # 1,000,000 / 1,234.56: the commas go
        written = written.replace(",", "")
    whole, _, fraction = written.replace(".", ",").partition(",")  # 3,5 (Senegalese) and 3.5 read alike
    if fraction:
        return f"{sign}{spell_number_text(whole)} koma {' '.join(number_to_words(int(d)) for d in fraction)}"
    return sign + spell_number_text(whole)


def spell_number_text(digits: str) -> str:
    # Checked by length first: int() of a digit string thousands long raises (Python's limit).
    if len(digits.lstrip("0")) > len(str(MAX_NUMBER)):
        return " ".join(number_to_words(int(d)) for d in digits)
    # Leading zeros are said ("007", a code "0042"): each one "tus", then the number.
    zeros = len(digits) - len(digits.lstrip("0")) if len(digits) > 1 else 0
    if zeros == len(digits):
        return " ".join(["tus"] * zeros)
    return " ".join(["tus"] * zeros + [number_to_words(int(digits))])


# 1 000 000 and 1.000.000 (thousands separators, the Senegalese/French convention: 1.500 is
# fifteen hundred; a group never starts with 0, so 0.250 is a decimal), 3,5 (decimal comma), 3.5
# (a decimal point: a dot not followed by three digits), plain digits; a minus sign before a number
# at the start or after a space or an opening bracket ("-5", not the range "2-3" or "30%-40%").
# A lone 10.30 or 24.12 reads as a decimal.
THOUSANDS = re.compile(r"[1-9]\d{0,2}(?:[ .]\d{3})+(?:,\d+)?")
# English thousands (1,000,000; 1,234.56): two comma groups or more, or comma groups before a decimal point:
# a lone "1,234" stays the Senegalese decimal comma.
ENGLISH_THOUSANDS = re.compile(r"[1-9]\d{0,2}(?:(?:,\d{3}){2,}(?:\.\d+)?|(?:,\d{3})+\.\d+)(?!\d)")
NUMBER = re.compile(
    r"(?:(?<![^\s(\[{\"«=:])[-−](?=\d))?"
    r"(?:[1-9]\d{0,2}(?:(?:,\d{3}){2,}(?:\.\d+)?|(?:,\d{3})+\.\d+)(?!\d)"
    r"|[1-9]\d{0,2}(?:[ .]\d{3})+(?!\d)(?:,\d+)?|\d+(?:[,.]\d+)?)"
)
# Phone numbers (77 123 45 67, 33 821 00 00, 01 23 45 67 89): groups of two or three digits, at least
# three, one of the later ones of two digits (so 12 345 678 stays a number in thousands). Read group
# by group, as people say them; a group is read as a number ("00" as "tus tus").
PHONE = re.compile(r"(?<!\d)(?<!\d[.,])\d{2,3}(?: \d{2,3}){2,}(?!\d|[.,]\d|\s\d)")


def spell_phone(match: re.Match) -> str:
    groups = match.group(0).split(" ")
    if all(len(g) == 3 for g in groups[1:]):
        return match.group(0)  # thousands: NUMBER reads it
    return (
        " "
        + " ".join(
            number_to_words(int(g)) if not g.startswith("0") else " ".join(number_to_words(int(d)) for d in g)
            for g in groups
        )
        + " "
    )


# Dates and versions (12.05.2023, 1.2.3): numbers joined by two dots or more that are not thousands
# groups are read one by one, the dots as pauses, not as decimal points.
DOTTED = re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?!\d)")


def split_dotted(match: re.Match) -> str:
    if THOUSANDS.fullmatch(match.group(0)):
        return match.group(0)
    return ". ".join(part.lstrip("0") or "0" for part in match.group(0).split("."))  # a date's 05 is said "5"


# Numbers in a date or time written with / or : (05/12/2024, 10:05, verse 3:16) are said without their
# leading zeros; a number standing alone keeps them ("007").
ZEROS_IN_GROUP = re.compile(r"(?:(?<=[:/])|(?<![\d.,])(?=0+\d+[:/]\d))0+(?=\d)")


ABBREVIATION = re.compile(
    r"(?<![^\W\d_])("
    + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True))
    + r")(\.(?=\s+\w|[,;:!?])|(?![^\W\d_]))",
    flags=re.IGNORECASE,
)


def expand_abbreviations(text: str) -> str:
    # The dot goes with the abbreviation when a word or other punctuation follows ("Dr. Ndiaye",
    # "etc., te"); at the end of a sentence ("... etc.") it stays as the full stop. A digit may touch the abbreviation on
    # either side ("n°5", "3Mme"): numbers become words after this, and the result must not
    # change when cleaned again.
    text = NUMERO.sub("nimero ", text)
    return ABBREVIATION.sub(
        lambda m: f" {ABBREVIATIONS[m.group(1).lower()]} ", text
    )  # "N°2e": the number stands apart


# A currency sign written before the amount ("$100", "$1 000") is read after it, as the words are
# said; before a range ("$5-10") it stays where it is.
CURRENCY_FIRST = re.compile(
    r"([" + re.escape(CURRENCIES) + r"])\s?((?:[1-9]\d{0,2}(?:(?:,\d{3}){2,}(?:\.\d+)?|(?:,\d{3})+\.\d+)(?!\d)"
    r"|(?:[1-9]\d{0,2}(?:[ .]\d{3})+(?!\d)|\d+)(?:[,.]\d+)?))(?!\d|[-−]\d)"
)  # not a range


# Number characters of their own: a vulgar fraction is read as "a ci b" ("a of b", as % is "ci téeméer":
# "1½" is "benn ak benn ci ñaar"), ‰ as per thousand. Superscripts (m², x³), circled and full-width
# digits and the rest become plain digits and letters by NFKC, as does the one-character ellipsis.
FRACTIONS = {ch: unicodedata.numeric(ch) for ch in "½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅐⅛⅜⅝⅞⅑⅒"}
FRACTION = re.compile("(\\d?)([" + "".join(FRACTIONS) + "])")


def spell_fraction(match: re.Match) -> str:
    numerator, denominator = unicodedata.normalize("NFKC", match.group(2)).split("\u2044")
    return f"{match.group(1)}{' ak ' if match.group(1) else ' '}{numerator} ci {denominator}"


# Superscript and subscript digits are read apart from what they follow; trademark signs and the ordinal
# indicators after a digit (1º, 2ª) are not said (NFKC would glue "tm", "o", "a" onto the word or number).
SUPERSCRIPT = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹₀₁₂₃₄₅₆₇₈₉]+")
NOT_SAID = re.compile("[™℠®©]|(?<=\\d)[ºª]")
# A plus sign before a number that follows no other ("+221 77 …", "+5°C") is not said; "2+3" is "ak".
PLUS_SIGN = re.compile(r"(?<![^\s(\[{\"«=:])\+(?=\d)")
# Hours: "15h30", "8 h" (a time, or a duration of hours) read "… waxtu (ak …)".
HOURS = re.compile(r"(?<![\w.,])(\d{1,2}) ?h(?: ?(\d{2})(?: ?(?:mn|min))?)?(?![^\W\d_])")


# Ordinals written with digits: the Wolof suffix ("2eel", "2eelu xët" with its connective) or the French
# one Senegalese text borrows ("2e", "3ème", "1er"): the number's words with -eel ("ñaareel", "ñetteel");
# the first is "njëkk".
ORDINAL = re.compile(
    r"(?<![\w.,])(\d{1,12})(eelu|éelu|eel|éel|èmes|ème|emes|eme|ères|ère|eres|ere|ers|er|res|re|es|e|è|nde|nd)(?!\w)(-(?=\d))?",
    flags=re.IGNORECASE,
)  # a hyphen after it, before a number, is a range ("2e-3e"), not a minus


def spell_ordinal(match: re.Match) -> str:
    n, connective = int(match.group(1)), "u" if match.group(2).lower().endswith("u") else ""
    return "njëkk" if n == 1 and not connective else f"{number_to_words(n)}eel{connective}"


# A fraction written with a slash ("3/4", "xët 2/10", "5/5") is read as a vulgar fraction is, "a ci b";
# not a date (12/05/2024: three parts; 15/08 and 31/12: a day before its month is the larger number,
# or the month has its zero), nor one part of a longer number.
SLASHED = re.compile(r"(?<![\d/.,:])(\d{1,3})/([1-9]\d{0,2})(?![\d/]|[.,]\d)")


def spell_slashed(match: re.Match) -> str:
    numerator, denominator = match.groups()
    return f"{numerator} ci {denominator}" if int(numerator) <= int(denominator) else match.group(0)


def spell_hours(match: re.Match) -> str:
    minutes = int(match.group(2) or 0)  # 8h00 is eight o'clock, 15h05 five past: the minutes without their zeros
    return f"{int(match.group(1))} waxtu" + (f" ak {minutes}" if minutes else "")


def wolof_cleaner(text: str) -> str:
    text = FRACTION.sub(spell_fraction, unicodedata.normalize("NFC", text)).replace("‰", " ci junni ")
    text = SUPERSCRIPT.sub(
        lambda m: " " + unicodedata.normalize("NFKC", m.group(0)), text
    )  # m², 10²: not "m2", not 102
    text = unicodedata.normalize("NFKC", NOT_SAID.sub("", text))
    text = text.translate(APOSTROPHES).replace("–", "-").replace("—", ", ")
    text = HOURS.sub(spell_hours, text)
    text = PLUS_SIGN.sub("", text)
    text = expand_abbreviations(text)
    text = CURRENCY_FIRST.sub(r"\2 \1", text)  # no space after: "£5-£10" is a range, not a minus
    text = DOTTED.sub(split_dotted, text)
    text = SLASHED.sub(spell_slashed, text)  # before the zeros go: 15/08 is a date
    text = ZEROS_IN_GROUP.sub("", text)
    text = PHONE.sub(spell_phone, text)
    text = ORDINAL.sub(lambda m: f" {spell_ordinal(m)}{' - ' if m.group(3) else ' '}", text)
    text = NUMBER.sub(lambda m: f" {spell_number(m)} ", text)
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    text = text.lower()
    # Letters and the marks written on them (Wolofal, the Arabic script: its vowel signs are combining marks).
    kept = []
    for ch in text:
        mark = (
            unicodedata.category(ch) == "Mn"
            and kept
            and (kept[-1].isalpha() or unicodedata.category(kept[-1]) == "Mn")
        )
        kept.append(ch if ch.isalpha() or mark or ch.isspace() or ch in KEPT_PUNCTUATION else " ")
    text = "".join(kept)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)  # no space before punctuation ("waaw ." → "waaw.")
    text = re.sub(r"([.,;:!?])[.,;:!?]+", r"\1", text)  # "def?," (a quote's end, then a dash) → "def?"
    text = re.sub(r"\s+", " ", text).strip().lstrip(".,;:!? ")  # nothing to pause after at the start ("...waaw")
    return unicodedata.normalize("NFC", text)  # a kept combining mark composed with its letter, as the input was
