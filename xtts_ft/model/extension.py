"""Extending a model's vocabulary: new languages and emotion tokens, every existing id and row kept.

The pieces `xtts-ft extend` runs in order: a BPE trained on a language's cleaned text and merged
into vocab.json (new tokens and merges appended), the `[xx]` language and `[emotion]` tokens,
the GPT's text embedding and head grown by a starting row per added token (`initial_rows`), and
the extended model's `xtts_ft.json` record ("extension"), which export, inference and the model
card read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig

from xtts_ft import __version__
from xtts_ft.data.cleaners import cleaner_name, language_letters
from xtts_ft.data.text import base_language, language_token
from xtts_ft.errors import BadValue, FileInTheWay
from xtts_ft.model.layout import SIDECAR, read_sidecar
from xtts_ft.model.loading import check_weights_file

log = logging.getLogger(__name__)

VOCAB_ROWS = ("gpt.text_embedding.weight", "gpt.text_head.weight", "gpt.text_head.bias")


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Extend replaces only its own models, and only when told to (overwrite=true)."""
    if out.exists() and not overwrite:
        raise FileInTheWay(f"{out} exists", fix="pass overwrite=true to replace it")
    if out.is_dir() and any(out.iterdir()) and read_sidecar(out).get("kind") != "extended":  # overwrite=true
        raise FileInTheWay(
            f"out_dir={out} exists and is not a model extend wrote (no {SIDECAR} of kind 'extended'); extend replaces "
            "only its own models",
            fix="choose another out_dir, or move that directory away yourself",
        )


def train_language_bpe(texts: List[str], vocab_size: int, letters: str = ""):
    """A BPE over one language's text, pre-tokenized as XTTS's vocabulary is (on whitespace).
    `letters` (the cleaner's declared alphabet) join the corpus's characters as base tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = sorted({ch for text in texts for ch in text if not ch.isspace()} | set(letters))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["[UNK]"], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return json.loads(tokenizer.to_str())["model"]


def merge_pair(merge) -> tuple:
    """A BPE merge as a (left, right) pair, from either serialised form ("a b" or ["a", "b"])."""
    if isinstance(merge, str):
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise BadValue(f"vocab.json: malformed BPE merge {merge!r} (expected two tokens separated by one space)")
        return left, right
    left, right = merge
    return left, right


def merge_vocabulary(vocab_json: dict, bpe: dict, new_specials: List[str]) -> List[str]:
    """Append the BPE's new tokens and merges, then the new special tokens; returns the added tokens
    in id order. Existing ids are never touched (asserted)."""
    model = vocab_json["model"]
    vocab: Dict[str, int] = model["vocab"]
    before = dict(vocab)
    next_id = max([*vocab.values(), *(t["id"] for t in vocab_json["added_tokens"])]) + 1
    added = []
    for token, _ in sorted(bpe["vocab"].items(), key=lambda item: item[1]):
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
            added.append(token)
    # Merges are "a b" strings in the released vocab.json (an older `tokenizers` wrote it) and
    # [a, b] pairs in what today's `tokenizers` writes: compare as pairs, append in the base's form.
    base_writes_strings = not model["merges"] or isinstance(model["merges"][0], str)
    known = {merge_pair(m) for m in model["merges"]}
    for merge in bpe["merges"]:
        pair = merge_pair(merge)
        if pair not in known:
            model["merges"].append(" ".join(pair) if base_writes_strings else list(pair))
            known.add(pair)
    for token in new_specials:
        vocab[token] = next_id
        vocab_json["added_tokens"].append(
            {
                "id": next_id,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        )
        next_id += 1
        added.append(token)
    assert all(vocab[token] == i for token, i in before.items()), "an existing token id changed"
    return added


def initial_rows(
    old_tokenizer,
    added: List[str],
    base_languages: List[str],
    new_languages: List[str],
    emotions: List[str],
    weight: torch.Tensor,
) -> torch.Tensor:
    """One starting row per added token, from the existing rows of `weight` (embedding or head)."""
    language_rows = [
        i for i in (old_tokenizer.token_to_id(language_token(x)) for x in base_languages) if i is not None
    ]
    language_mean = weight[language_rows].mean(0) if language_rows else weight.mean(0)
    unk = old_tokenizer.token_to_id("[UNK]")
    rows = []
    for token in added:
        if token in [language_token(x) for x in new_languages]:
            rows.append(language_mean)
        elif token in [f"[{e}]" for e in emotions]:
            rows.append(weight.mean(0))
        else:
            pieces = old_tokenizer.encode(token).ids
            rows.append(weight[pieces].mean(0) if pieces and unk not in pieces else weight.mean(0))
    return torch.stack(rows).to(weight.dtype)


def tokens_to_add(cfg: DictConfig, old_tokenizer, texts: Dict[str, List[str]]) -> Tuple[List[str], List[str]]:
    """(new languages, new emotions): those asked for (every manifest language by default) that the
    base has no token for. A new language needs text in the corpus to train its tokens on."""
    wanted = [base_language(x) for x in cfg.languages] if cfg.languages else sorted(texts)
    new_languages = [x for x in wanted if old_tokenizer.token_to_id(language_token(x)) is None]
    for language in new_languages:
        if not texts.get(language):
            raise BadValue(
                f"no {language!r} text in {cfg.data.name}'s manifests to train its tokens on (languages there: {', '.join(sorted(texts))})"
            )
    emotions = [e for e in cfg.emotions if old_tokenizer.token_to_id(f"[{e}]") is None]
    if not new_languages and not emotions:
        log.warning(
            "nothing to add: the base already has %s", ", ".join(wanted + list(cfg.emotions)) or "everything asked"
        )
    return new_languages, emotions


def extend_vocabulary(
    vocab_json: dict, texts: Dict[str, List[str]], new_languages: List[str], emotions: List[str], bpe_vocab_size: int
) -> Tuple[List[str], int]:
    """Merge each new language's BPE into vocab_json, then its `[xx]` and the `[emotion]` tokens;
    returns the added tokens in id order and the number of text tokens now. Fails if a new
    language's corpus, or a letter its cleaner declares, still encodes to [UNK]."""
    from tokenizers import Tokenizer

    added: List[str] = []
    for language in new_languages:
        bpe = train_language_bpe(texts[language], bpe_vocab_size, language_letters(language))
        added += merge_vocabulary(vocab_json, bpe, [])
    added += merge_vocabulary(
        vocab_json,
        {"vocab": {}, "merges": []},
        [language_token(x) for x in new_languages] + [f"[{e}]" for e in emotions],
    )
    new_tokenizer = Tokenizer.from_str(json.dumps(vocab_json))
    unk = new_tokenizer.token_to_id("[UNK]")
    for language in new_languages:  # the corpus and every declared letter encode without [UNK]
        unknown = sum(new_tokenizer.encode(t).ids.count(unk) for t in texts[language])
        unknown_letters = [ch for ch in language_letters(language) if unk in new_tokenizer.encode(ch).ids]
        if unknown or unknown_letters:
            raise AssertionError(
                f"{unknown} [UNK] tokens left in the {language!r} corpus after extension "
                f"(letters without a token: {''.join(unknown_letters) or 'none'})"
            )
    return added, max(new_tokenizer.get_vocab().values()) + 1


def grown_checkpoint(
    base_dir: Path,
    old_tokenizer,
    added: List[str],
    number_tokens: int,
    base_languages: List[str],
    new_languages: List[str],
    emotions: List[str],
) -> dict:
    """The base's model.pth with a row per added token appended to the text embedding and head."""
    check_weights_file(base_dir / "model.pth")
    checkpoint = torch.load(base_dir / "model.pth", map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    for key in VOCAB_ROWS:
        old = state[key]
        if old.shape[0] != number_tokens - len(added):
            raise BadValue(
                f"{base_dir / 'model.pth'}: {key} has {old.shape[0]} rows but vocab.json has {number_tokens - len(added)} tokens"
            )
        state[key] = (
            torch.cat([old, initial_rows(old_tokenizer, added, base_languages, new_languages, emotions, old)])
            if added
            else old
        )
    return checkpoint


def extended_sidecar(
    cfg: DictConfig,
    base_sidecar: dict,
    texts: Dict[str, List[str]],
    new_languages: List[str],
    emotions: List[str],
    added: int,
    number_tokens: int,
) -> dict:
    """xtts_ft.json of the extended model: the base's, with what this extension (and any earlier
    one of the base) added under "extension"."""
    previous = base_sidecar.get("extension", {})
    char_limits = {**previous.get("char_limits", {}), **{x: int(cfg.char_limit) for x in new_languages}}
    extension = {
        "languages": previous.get("languages", []) + new_languages,
        "emotion_tokens": previous.get("emotion_tokens", []) + emotions,
        "char_limits": char_limits,
        "cleaners": {**previous.get("cleaners", {}), **{x: cleaner_name(x) for x in new_languages}},
        "added_tokens": added,
        "text_tokens": {"before": number_tokens - added, "after": number_tokens},
        "corpus": {"data": cfg.data.name, "texts": {x: len(texts[x]) for x in new_languages}},
        "bpe_vocab_size": int(cfg.bpe_vocab_size),
    }
    return {
        **{k: v for k, v in base_sidecar.items() if k not in ("extension", "base")},
        "kind": "extended",
        "xtts_ft_version": __version__,
        "base": {
            "source": str(cfg.model.source),
            "name": cfg.model.name,
            "kind": base_sidecar.get("kind", "released"),
        },
        "extension": extension,
    }
