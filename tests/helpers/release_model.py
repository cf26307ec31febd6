"""A randomly initialised model in the released coqui/XTTS-v2 file formats, built only with plain
coqui-tts and `tokenizers` (never with `xtts_ft.model.tiny`), for the tests that mean "the released
base". Sizes are parameters; everything that is not a size is what the release has:

- vocab.json as the release stores it: BPE merges as "a b" strings (an older `tokenizers` wrote
  it), `[STOP]`=0, `[UNK]`=1, `[SPACE]`=2, the language tokens and `[START]` scattered among the
  merges' ids (added over the model's history: `[START]` is not the last id, `[ja]`, `[hu]`,
  `[ko]`, `[hi]` sit near the end), no `byte_fallback`/`ignore_merges` keys;
- config.json with the release's keys and values: trainer keys coqui ignores at load,
  `max_audio_len: Infinity`, 1026 audio tokens (start 1024, stop 1025), perceiver conditioning,
  605 / 402 max audio / text tokens, code stride 1024, 22050 / 24000 Hz, 17 languages, the
  release's decoding settings;
- model.pth as {"model": state_dict}; dvae.pth as a bare DiscreteVAE state dict with 1024 codes
  (no sidecar tells its shape); mel_stats.pth an 80-vector; speakers_xtts.pth with named voices
  {name: {"gpt_cond_latent": (1, 32, C), "speaker_embedding": (1, 512, 1)}}.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
VOICES = ("Claribel Dervla", "Daisy Studious", "Andrew Chipper")
# The real DVAE (coqui's GPT trainer); `small=True` keeps 1024 codes with narrower layers.
DVAE_KWARGS = dict(
    channels=80,
    normalization=None,
    positional_dims=1,
    num_tokens=1024,
    codebook_dim=512,
    hidden_dim=512,
    num_resnet_blocks=3,
    kernel_size=3,
    num_layers=2,
    use_transposed_convs=False,
)
SMALL_DVAE = {**DVAE_KWARGS, "codebook_dim": 64, "hidden_dim": 32, "num_resnet_blocks": 1}
TEXT = [
    "the quick brown fox jumps over the lazy dog and the birch canoe slid on the smooth planks",
    "she sells sea shells by the sea shore while glue the sheet to the dark blue background",
    "le petit chat dort sur le canapé et il fait très beau aujourd'hui à la maison",
    "nous allons au marché le samedi matin avec les enfants de l'école",
    "el rápido zorro marrón salta sobre el perro perezoso cerca del río",
    "der schnelle braune fuchs springt über den faulen hund",
]
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()") + list("àâäçéèêëîïôöùûüÿñœæßáíóú")


def release_vocab(path: Path, merges_target: int = 400) -> dict:
    """Train a BPE with `tokenizers`, then lay its ids out and serialise it as the release does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=merges_target,
        special_tokens=["[STOP]", "[UNK]", "[SPACE]"],
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(trained["vocab"].items(), key=lambda item: item[1])]
    # Where the release's special tokens sit: early ones just after the alphabet ([en] [de] [START] [fr]
    # at ids ~259-262 in the release), the rest spread through the merges, the last languages near the end.
    first_merge = len(ALPHABET) + 3
    inserts = {
        first_merge + 2: ["[en]", "[de]", "[START]", "[fr]"],
        first_merge + 20: ["[es]", "[it]", "[pt]"],
        first_merge + 40: ["[pl]", "[tr]", "[ru]", "[nl]", "[cs]", "[ar]", "[zh-cn]"],
        len(tokens) - 5: ["[ja]", "[hu]", "[ko]", "[hi]"],
    }
    laid_out = []
    for i, token in enumerate(tokens):
        laid_out += inserts.get(i, [])
        laid_out.append(token)
    vocab = {token: i for i, token in enumerate(laid_out)}
    specials = ["[STOP]", "[UNK]", "[SPACE]"] + [t for group in inserts.values() for t in group]
    added = [
        {
            "id": vocab[t],
            "special": True,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
        }
        for t in sorted(specials, key=vocab.get)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in trained["merges"]]
    release = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "[UNK]",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    text = json.dumps(release, ensure_ascii=False, indent=2)
    Tokenizer.from_str(text)  # `tokenizers` reads it, as it reads the release
    path.write_text(text, encoding="utf-8")
    return release


def release_config(number_text_tokens: int, layers: int, width: int, heads: int) -> dict:
    """config.json as released (keys and values), with the GPT sizes given."""
    return {
        "output_path": "output",
        "logger_uri": None,
        "run_name": "run",
        "project_name": None,
        "run_description": "\U0001f438Coqui trainer run.",
        "print_step": 25,
        "plot_step": 100,
        "model_param_stats": False,
        "wandb_entity": None,
        "dashboard_logger": "tensorboard",
        "log_model_step": None,
        "save_step": 10000,
        "save_n_checkpoints": 5,
        "save_checkpoints": True,
        "save_all_best": False,
        "save_best_after": 10000,
        "target_loss": None,
        "print_eval": False,
        "test_delay_epochs": 0,
        "run_eval": True,
        "run_eval_steps": None,
        "distributed_backend": "nccl",
        "distributed_url": "tcp://localhost:54321",
        "mixed_precision": False,
        "epochs": 1000,
        "batch_size": 32,
        "eval_batch_size": 16,
        "grad_clip": 0.0,
        "scheduler_after_epoch": True,
        "lr": 0.001,
        "optimizer": "radam",
        "optimizer_params": None,
        "lr_scheduler": None,
        "lr_scheduler_params": {},
        "use_grad_scaler": False,
        "cudnn_enable": True,
        "cudnn_deterministic": False,
        "cudnn_benchmark": False,
        "training_seed": 54321,
        "model": "xtts",
        "num_loader_workers": 0,
        "num_eval_loader_workers": 0,
        "use_noise_augment": False,
        "audio": {"sample_rate": 22050, "output_sample_rate": 24000},
        "use_phonemes": False,
        "phonemizer": None,
        "phoneme_language": None,
        "compute_input_seq_cache": False,
        "text_cleaner": None,
        "enable_eos_bos_chars": False,
        "test_sentences_file": "",
        "phoneme_cache_path": None,
        "characters": None,
        "add_blank": False,
        "batch_group_size": 0,
        "loss_masking": None,
        "min_audio_len": 1,
        "max_audio_len": float("inf"),
        "min_text_len": 1,
        "max_text_len": float("inf"),
        "compute_f0": False,
        "compute_energy": False,
        "compute_linear_spec": False,
        "precompute_num_workers": 0,
        "start_by_longest": False,
        "shuffle": False,
        "drop_last": False,
        "datasets": [
            {
                "formatter": "",
                "dataset_name": "",
                "path": "",
                "meta_file_train": "",
                "ignored_speakers": None,
                "language": "",
                "phonemizer": "",
                "meta_file_val": "",
                "meta_file_attn_mask": "",
            }
        ],
        "test_sentences": [],
        "eval_split_max_size": None,
        "eval_split_size": 0.01,
        "use_speaker_weighted_sampler": False,
        "speaker_weighted_sampler_alpha": 1.0,
        "use_language_weighted_sampler": False,
        "language_weighted_sampler_alpha": 1.0,
        "use_length_weighted_sampler": False,
        "length_weighted_sampler_alpha": 1.0,
        "model_args": {
            "gpt_batch_size": 1,
            "enable_redaction": False,
            "kv_cache": True,
            "gpt_checkpoint": None,
            "clvp_checkpoint": None,
            "decoder_checkpoint": None,
            "num_chars": 255,
            "tokenizer_file": "",
            "gpt_max_audio_tokens": 605,
            "gpt_max_text_tokens": 402,
            "gpt_max_prompt_tokens": 70,
            "gpt_layers": layers,
            "gpt_n_model_channels": width,
            "gpt_n_heads": heads,
            "gpt_number_text_tokens": number_text_tokens,
            "gpt_start_text_token": None,
            "gpt_stop_text_token": None,
            "gpt_num_audio_tokens": 1026,
            "gpt_start_audio_token": 1024,
            "gpt_stop_audio_token": 1025,
            "gpt_code_stride_len": 1024,
            "gpt_use_masking_gt_prompt_approach": True,
            "gpt_use_perceiver_resampler": True,
            "input_sample_rate": 22050,
            "output_sample_rate": 24000,
            "output_hop_length": 256,
            "decoder_input_dim": width,
            "d_vector_dim": 512,
            "cond_d_vector_in_each_upsampling_layer": True,
            "duration_const": 102400,
        },
        "model_dir": None,
        "languages": list(LANGUAGES),
        "temperature": 0.75,
        "length_penalty": 1.0,
        "repetition_penalty": 5.0,
        "top_k": 50,
        "top_p": 0.85,
        "num_gpt_outputs": 1,
        "gpt_cond_len": 30,
        "gpt_cond_chunk_len": 4,
        "max_ref_len": 10,
        "sound_norm_refs": False,
    }


def build_release_like(
    out_dir: Path, layers: int = 2, width: int = 64, heads: int = 4, full_dvae: bool = False, seed: int = 0
) -> Path:
    """Write config.json, model.pth, vocab.json, dvae.pth, mel_stats.pth, speakers_xtts.pth to `out_dir`.
    The release's sizes are layers=30, width=1024, heads=16, full_dvae=True."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = release_vocab(out_dir / "vocab.json")
    number_text_tokens = max(vocab["model"]["vocab"].values()) + 1
    (out_dir / "config.json").write_text(
        json.dumps(release_config(number_text_tokens, layers, width, heads), indent=4), encoding="utf-8"
    )
    config = XttsConfig()
    config.load_json(str(out_dir / "config.json"))
    model = Xtts(config)
    model.tokenizer = VoiceBpeTokenizer(vocab_file=str(out_dir / "vocab.json"))
    model.init_models()
    mel_stats = 0.5 + torch.rand(80)  # positive per-channel means, as the release's file holds
    model.mel_stats.copy_(mel_stats)
    torch.save({"model": model.state_dict()}, out_dir / "model.pth")
    torch.save(DiscreteVAE(**(DVAE_KWARGS if full_dvae else SMALL_DVAE)).state_dict(), out_dir / "dvae.pth")
    torch.save(mel_stats, out_dir / "mel_stats.pth")
    voices = {
        name: {"gpt_cond_latent": torch.randn(1, 32, width), "speaker_embedding": torch.randn(1, 512, 1)}
        for name in VOICES
    }
    torch.save(voices, out_dir / "speakers_xtts.pth")
    del model
    return out_dir
