"""Stage `extend`: a base model + a prepared corpus → an extended base that knows new languages
and emotion tokens, in the stock layout, ready for `train-gpt model.source=<it>`.

What it does, in the order a person would do it by hand (and what breaks when a step is missed):
1. trains a BPE on the new language's cleaned manifest text and merges it into vocab.json:
   new tokens and merges are appended, so every existing token keeps its id;
2. adds a `[xx]` token per new language and an `[emotion]` token per emotion asked for;
3. grows the GPT's text embedding and text head by the new rows, every existing row kept
   bit-for-bit; a new BPE token starts as the mean of the rows of the pieces the old
   vocabulary split it into (what the model read for that text until now), a new language
   token as the mean of the existing language tokens, an emotion token as the mean of all rows;
4. adds the language to `config.languages` and its character limit to the tokenizer table;
5. records all of it in `xtts_ft.json` ("extension"), which export, inference and the model card read.

The text cleaner of a new language comes from the registry in `xtts_ft.data.cleaners` (Wolof
has one); a language without a registered cleaner gets the basic one, and the record says which.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig

from xtts_ft import __version__
from xtts_ft.data.cleaners import cleaner_name, language_letters
from xtts_ft.data.sample import read_manifest
from xtts_ft.data.text import base_language, language_token
from xtts_ft.io_utils import atomic_dir, torch_save, write_json
from xtts_ft.model.layout import SIDECAR, STOCK_FILES, read_sidecar
from xtts_ft.model.loading import check_weights_file, resolve_model_cfg

log = logging.getLogger(__name__)

VOCAB_ROWS = ("gpt.text_embedding.weight", "gpt.text_head.weight", "gpt.text_head.bias")
SPECIAL = ("[STOP]", "[UNK]", "[SPACE]", "[START]")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir)


def outputs(cfg: DictConfig) -> List[Path]:
    return [output_dir(cfg) / name for name in ("config.json", "model.pth", "vocab.json", SIDECAR)]


def corpus_texts(cfg: DictConfig) -> Dict[str, List[str]]:
    """Cleaned texts per language from the prepared manifests (train, then eval)."""
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    texts: Dict[str, List[str]] = {}
    for split in ("train", "eval"):
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run `xtts-ft prepare data={cfg.data.name}` first")
        for sample in read_manifest(path):
            texts.setdefault(base_language(sample.language), []).append(sample.text)
    return texts


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
            raise ValueError(f"vocab.json: malformed BPE merge {merge!r} (expected two tokens separated by one space)")
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


def run(cfg: DictConfig) -> Path:
    from tokenizers import Tokenizer

    base_dir = resolve_model_cfg(cfg.model)
    out = output_dir(cfg)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    if out.is_dir() and any(out.iterdir()) and read_sidecar(out).get("kind") != "extended":  # overwrite=true
        raise FileExistsError(
            f"out_dir={out} exists and is not a model extend wrote (no {SIDECAR} of kind 'extended'); extend replaces "
            "only its own models — fix: choose another out_dir, or move that directory away yourself"
        )
    base_sidecar = read_sidecar(base_dir)
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    vocab_json = json.loads((base_dir / "vocab.json").read_text(encoding="utf-8"))
    old_tokenizer = Tokenizer.from_str(json.dumps(vocab_json))
    texts = corpus_texts(cfg)
    new_languages, emotions = tokens_to_add(cfg, old_tokenizer, texts)

    # 1-2. Vocabulary: each new language's BPE, then the new special tokens.
    added, number_tokens = extend_vocabulary(vocab_json, texts, new_languages, emotions, cfg.bpe_vocab_size)

    # 3. Text embedding and head: existing rows untouched, new rows appended.
    checkpoint = grown_checkpoint(
        base_dir, old_tokenizer, added, number_tokens, config["languages"], new_languages, emotions
    )

    # 4. Config: languages and the text-token count the loader sizes the embedding by.
    config["languages"] = list(config["languages"]) + [x for x in new_languages if x not in config["languages"]]
    config["model_args"]["gpt_number_text_tokens"] = number_tokens
    config["model_args"]["tokenizer_file"] = ""  # vocab.json beside model.pth

    # 5. The record.
    sidecar = extended_sidecar(cfg, base_sidecar, texts, new_languages, emotions, len(added), number_tokens)
    with atomic_dir(out) as tmp:
        for name in STOCK_FILES:
            if name not in ("config.json", "model.pth", "vocab.json") and (base_dir / name).is_file():
                shutil.copy2(base_dir / name, tmp / name)
        torch_save(checkpoint, tmp / "model.pth")
        write_json(tmp / "vocab.json", vocab_json)
        write_json(tmp / "config.json", config)
        write_json(tmp / SIDECAR, sidecar)
    print(
        f"extended {base_dir} → {out}: +{len(added)} text tokens ({', '.join(new_languages) or 'no new language'}; "
        f"emotions: {', '.join(emotions) or 'none'}); train with model.source={out} model.build_tiny=false"
    )
    return out


def tokens_to_add(cfg: DictConfig, old_tokenizer, texts: Dict[str, List[str]]) -> Tuple[List[str], List[str]]:
    """(new languages, new emotions): those asked for (every manifest language by default) that the
    base has no token for. A new language needs text in the corpus to train its tokens on."""
    wanted = [base_language(x) for x in cfg.languages] if cfg.languages else sorted(texts)
    new_languages = [x for x in wanted if old_tokenizer.token_to_id(language_token(x)) is None]
    for language in new_languages:
        if not texts.get(language):
            raise ValueError(
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
            raise ValueError(
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
