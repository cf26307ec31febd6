"""Speech the tests can hear: espeak-ng's honest audio in many languages, and a tiny random
MMS-like CTC model (wav2vec2 with one adapter per language) saved in MMS's layout and loaded by path."""

import io
import json
import subprocess
from pathlib import Path

import soundfile as sf

SPECIAL = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
ALPHABETS = {"wol": "abcdefgijklmnopqrstuwxyñëéó", "fra": "abcdefghijklmnopqrstuvwxyzéèàç"}
FAVOURITE = {"wol": "ñ", "fra": "e"}  # what each language's adapter head says, whatever it hears


def build_tiny_mms(out: Path) -> Path:
    """A random wav2vec2 CTC model (16-wide, one layer) with MMS's layout: one vocabulary per
    ISO 639-3 language in vocab.json and one adapter file per language whose CTC head always
    prefers that language's FAVOURITE letter, so a transcript shows which language was loaded."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out.mkdir(parents=True, exist_ok=True)
    vocab = {
        lang: {**SPECIAL, **{c: i + len(SPECIAL) for i, c in enumerate(chars)}} for lang, chars in ALPHABETS.items()
    }
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), target_lang="wol", word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16, 16, 16, 16),
        conv_stride=(5, 4, 4, 4),
        conv_kernel=(10, 4, 4, 4),  # 320x: 50 frames/s
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=len(vocab["wol"]),
        adapter_attn_dim=8,
        pad_token_id=0,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    model = Wav2Vec2ForCTC(config)
    model.save_pretrained(out)
    for lang, letters in vocab.items():
        model.lm_head = torch.nn.Linear(config.hidden_size, len(letters))
        weights = {k: v.detach().clone() for k, v in model._get_adapters().items()}
        weights["lm_head.weight"].zero_()
        weights["lm_head.bias"].zero_()
        weights["lm_head.bias"][letters[FAVOURITE[lang]]] = 10.0
        save_file(weights, str(out / f"adapter.{lang}.safetensors"))
    return out


def espeak(text: str, voice: str = "en-us") -> tuple:
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, text], check=True, capture_output=True).stdout
    return sf.read(io.BytesIO(wav), dtype="float32")
