"""Stage `extend`: a base model + a prepared corpus → an extended base that knows new languages
and emotion tokens, in the stock layout, ready for `train-gpt model=extended`.

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

The steps are `xtts_ft.model.extension`'s; this stage reads the base and the corpus, runs them
and writes the extended model aside, then moves it into place.

The text cleaner of a new language comes from the registry in `xtts_ft.data.cleaners` (Wolof
has one); a language without a registered cleaner gets the basic one, and the record says which.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List

from omegaconf import DictConfig

from xtts_ft.data.sample import read_manifest
from xtts_ft.data.text import base_language
from xtts_ft.errors import MissingFile
from xtts_ft.io_utils import atomic_dir, torch_save, write_json
from xtts_ft.model.extension import (
    check_replaceable,
    extend_vocabulary,
    extended_sidecar,
    grown_checkpoint,
    tokens_to_add,
)
from xtts_ft.model.layout import SIDECAR, STOCK_FILES, read_sidecar
from xtts_ft.model.loading import resolve_model_cfg

log = logging.getLogger(__name__)


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
            raise MissingFile(f"{path} does not exist", fix=f"run `xtts-ft prepare data={cfg.data.name}` first")
        for sample in read_manifest(path):
            texts.setdefault(base_language(sample.language), []).append(sample.text)
    return texts


def training_command(cfg: DictConfig, out: Path) -> str:
    """How to train on the extended base, as the README and docs/extend.md teach it: `model=extended`
    (conf/model/extended.yaml: <paths.models_dir>/<data.name>-extended), with what this run moved."""
    from xtts_ft.config import default_paths

    command = f"xtts-ft train-gpt data={cfg.data.name} model=extended"
    models_dir = str(cfg.paths.models_dir)
    if out != Path(models_dir) / f"{cfg.data.name}-extended":  # out_dir= put it elsewhere
        return f"{command} model.source={out}"
    return command + (f" paths.models_dir={models_dir}" if models_dir != default_paths().models_dir else "")


def run(cfg: DictConfig) -> Path:
    from tokenizers import Tokenizer

    base_dir = resolve_model_cfg(cfg.model)
    out = output_dir(cfg)
    check_replaceable(out, cfg.overwrite)
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
    log.info(
        f"extended {base_dir} → {out}: +{len(added)} text tokens ({', '.join(new_languages) or 'no new language'}; "
        f"emotions: {', '.join(emotions) or 'none'}); train on it: {training_command(cfg, out)}"
    )
    return out
