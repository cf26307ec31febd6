"""The model card (README.md) of an export: what the model is, how it was made, how it scores.

Written by `export` from the export record (xtts_ft.json), again by `evaluate write_metrics=true`
when it adds metrics and forgetting to that record, and by `push` from the public record
(xtts_ft.model.public: no local path) with the repo it goes to, for the whole export or the
adapter alone; plain functions of the record, so these stages share it without importing each
other."""

from __future__ import annotations

from typing import Optional

from xtts_ft.model.public import hub_id_of


def metrics_table(metrics: dict) -> str:
    """The summary `xtts-ft evaluate` recorded, one row per language; or a note that there is none."""
    per_language = metrics.get("per_language") or {}
    if not per_language:
        return "Not evaluated yet: `xtts-ft evaluate checkpoint=<this directory> write_metrics=true ...` fills this section."
    columns = [
        ("cer", "CER"),
        ("wer", "WER"),
        ("speaker_similarity", "speaker sim."),
        ("dnsmos", "DNSMOS"),
        ("flagged", "flagged"),
        ("utterances", "utterances"),
    ]
    lines = ["| language | " + " | ".join(name for _, name in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for language, row in per_language.items():
        cells = ["–" if row.get(key) is None else f"{row[key]:.3g}" for key, _ in columns]
        lines.append(f"| {language} | " + " | ".join(cells) + " |")
    models = metrics.get("metric_models", {})
    lines += [
        "",
        f"CER and WER are fractions (0.05 = 5 %). Probes: {metrics.get('probes') or '?'}; evaluated "
        f"{metrics.get('evaluated_at', '?')}. ASR: {models.get('asr')}; speaker similarity: {models.get('speaker')}; "
        f"quality: {models.get('quality')}. Not the XTTS paper's models (Whisper large-v3, ECAPA2, UTMOS), so not "
        "comparable to its published numbers.",
    ]
    return "\n".join(lines)


def forgetting_table(metrics: dict) -> str:
    """What fine-tuning cost the base's languages, when `xtts-ft evaluate checkpoints=[<base>,<this>]` measured it."""
    per_language = (metrics.get("forgetting") or {}).get("per_language") or {}
    if not per_language:
        return ""
    columns = [("cer", "CER"), ("speaker_similarity", "speaker sim."), ("flagged", "flag rate")]
    cell = lambda v: "–" if v is None else f"{v:+.3g}"  # noqa: E731
    lines = [
        "",
        "",
        f"### Forgetting: against the base `{metrics['forgetting']['base']}`",
        "",
        "| language | " + " | ".join(f"{name} (base → this, change)" for _, name in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for language, row in per_language.items():
        cells = [
            f"{'–' if row.get(k + '_base') is None else format(row[k + '_base'], '.3g')} → "
            f"{'–' if row.get(k) is None else format(row[k], '.3g')} ({cell(row.get(k + '_change'))})"
            for k, _ in columns
        ]
        lines.append(f"| {language} | " + " | ".join(cells) + " |")
    lines += ["", "CER and flag rate up, or speaker similarity down, is what fine-tuning cost the language."]
    return "\n".join(lines)


def extension_section(record: dict) -> str:
    """How to use the languages and emotion tokens this model added, with plain coqui-tts too."""
    extension = record.get("extension") or {}
    lines = []
    new_languages = extension.get("languages", [])
    if new_languages:
        codes = ", ".join(f'"{x}"' for x in new_languages)
        limits = extension.get("char_limits", {})
        lines += [
            f"### New languages: {', '.join(new_languages)}",
            "",
            f"coqui-tts's tokenizer cleans only the languages it knows and raises NotImplementedError for {codes}.",
            "Give it a cleaner in your own code after loading (the model files need no change; xtts-ft does",
            "this for you):",
            "",
            "```python",
            "from xtts_ft.data.text import clean_text  # the cleaner the model was trained with; or your own",
            "",
            "coqui_preprocess = model.tokenizer.preprocess_text",
            f"model.tokenizer.preprocess_text = lambda txt, lang: clean_text(txt, lang) if lang in ({codes},) else coqui_preprocess(txt, lang)",
            *(f'model.tokenizer.char_limits["{x}"] = {limits.get(x, 250)}' for x in new_languages),
            f'out = model.synthesize("...", speaker_wav="reference.wav", language="{new_languages[0]}")',
            "```",
            "",
            f"Cleaners used in training: {', '.join(f'{k}: {v}' for k, v in extension.get('cleaners', {}).items())}.",
            "",
        ]
    emotions = extension.get("emotion_tokens", [])
    if emotions:
        lines += [
            f"### Emotion tokens: {', '.join(emotions)}",
            "",
            f'Write the token right before the text, with no space: `"[{emotions[0]}]Hello there."` (plain coqui-tts),',
            f"or `xtts-ft synth ... emotion={emotions[0]}`.",
            "",
        ]
    presets = record.get("emotion_presets") or []
    if presets:
        lines += [
            f"### Emotion presets: {', '.join(presets)}",
            "",
            "`emotions_xtts.pth` holds conditioning latents of reference clips spoken with each emotion;",
            f"`xtts-ft synth ... emotion={presets[0]}` conditions the GPT on them while keeping the voice's timbre.",
            "",
        ]
    return ("## Languages and emotions added by xtts-ft\n\n" + "\n".join(lines)) if lines else ""


def decoder_line(record: dict) -> str:
    steps = record["training"].get("decoder_steps")
    return f", HiFiGAN decoder fine-tuned for {steps} steps," if steps else ""


def checkpoint_line(training: dict) -> str:
    """Which step of the GPT run the export holds, and why (`export checkpoint=`)."""
    chosen = training.get("checkpoint")
    if not chosen:
        return ""
    of = f" of {chosen['run_steps']}" if chosen.get("run_steps") else ""
    if chosen["choice"] == "best":
        metric = "eval CER" if chosen.get("metric") == "cer" else "eval loss"
        value = "?" if chosen.get("value") is None else f"{chosen['value']:.3g}"
        return f"Exported: the best {metric} {value} at step {chosen['step']}{of} (`checkpoint=best`).\n"
    if chosen["choice"] == "latest":
        return f"Exported: the last saved step, {chosen['step']}{of} (`checkpoint=latest`).\n"
    return f"Exported: step {chosen['step']}{of}, chosen by number (`checkpoint={chosen['step']}`).\n"


def base_hub_id(base: dict) -> Optional[str]:
    """The Hub id of these very base weights (recorded at export; older records: read off the source)."""
    return base.get("hub_id") if "hub_id" in base else hub_id_of(str(base.get("source", "")))[0]


def base_metadata(base: dict) -> str:
    """The card's `base_model:` line: a Hub id (the base's, or the one an extended base was made from), or none."""
    hub_id = base_hub_id(base) or base.get("derived_from")
    return f"base_model: {hub_id}\n" if hub_id else ""


def base_sentence(base: dict) -> str:
    """The base named for a reader: by Hub id (and revision) where the Hub has it, always with its hash."""
    sha = f"model.pth sha256 `{base.get('model_sha256', '?')[:12]}…`"
    hub_id = base_hub_id(base)
    if hub_id:
        revision = f" at revision `{base['revision']}`" if base.get("revision") else ""
        return f"`{hub_id}`{revision} ({base.get('kind', '?')}; {sha})"
    local = f"`{base.get('source')}` ({base.get('kind', '?')}; {sha})"
    if base.get("derived_from"):
        return f"{local}, made from `{base['derived_from']}` by `xtts-ft extend`: a local model, not on the Hub"
    return f"{local}: a local model, not on the Hub (so this card names no `base_model`)"


def synthesizer_call(base: dict, adapter: str) -> str:
    """XttsSynthesizer(base, [revision=...,] adapter=...): the base by Hub id where it has one."""
    hub_id = base_hub_id(base)
    revision = f', revision="{base["revision"]}"' if hub_id and base.get("revision") else ""
    return f'XttsSynthesizer("{hub_id or base.get("source")}"{revision}, adapter="{adapter}")'


def adapter_section(record: dict, repo_id: Optional[str] = None, adapter_only: bool = False) -> str:
    """For an export with `adapter=true`: the PEFT LoRA files (beside the merged model, or alone on the
    Hub), the base they apply to, and how to load base + adapter."""
    adapter = record.get("adapter")
    if not adapter:
        return ""
    same = {k: v for k, v in record["base_model"].items() if k not in ("source", "model_sha256")}
    base = {**same, **adapter["base_model"]}  # the export's base: its Hub fields, the adapter's own hash
    files = ", ".join(f"`{name}`" for name in adapter["files"])
    where = (
        "This repo holds only the adapter"
        if adapter_only
        else "`model.pth` already holds the adapter merged into the GPT: the sections above load it as an ordinary "
        "XTTS-v2. The adapter itself is here too"
    )
    local = "" if base_hub_id(base) else "  # the base's folder: it is not on the Hub"
    return f"""## The LoRA adapter

{where}, in 🤗 PEFT's format ({files}: rank
{adapter["rank"]}, alpha {adapter["alpha"]}, on {", ".join(adapter["targets"])}), for use over its base model,
{base_sentence(base)}; another base is refused:

```python
from xtts_ft import XttsSynthesizer

synth = {synthesizer_call(base, repo_id or ".")}{local}
result = synth.synthesize(text="Hello!", language="{record["languages"][0]}", reference="reference.wav")
```

"""


def coqui_section(adapter_only: bool) -> str:
    if adapter_only:  # no model.pth here: the base + adapter snippet is the way in
        return ""
    return """## Use with coqui-tts

```python
from TTS.tts.configs.xtts_config import XttsConfig
from TTS.tts.models.xtts import Xtts

config = XttsConfig()
config.load_json("config.json")
model = Xtts(config)
model.load_checkpoint(config, checkpoint_dir=".", eval=True)
out = model.synthesize("Hello!", speaker_wav="reference.wav", language="en")
```

"""


def xtts_ft_section(repo_id: Optional[str], adapter_only: bool) -> str:
    if adapter_only:
        return ""
    return f"""## Use with xtts-ft

```bash
xtts-ft synth checkpoint={repo_id or "."} text="Hello!" language=en reference=reference.wav out=hello.wav
```

"""


def model_card(record: dict, repo_id: Optional[str] = None, adapter_only: bool = False) -> str:
    """The card of an export (`repo_id`: the Hub repo it is pushed to; `adapter_only`: only the adapter goes)."""
    # The Hub's metadata wants ISO 639-1 codes: XTTS's "zh-cn" is "zh" there.
    languages = "\n".join(f"- {lang.split('-')[0]}" for lang in record["languages"])
    base = record["base_model"]
    metrics = record.get("metrics") or {}
    metrics_md = metrics_table(metrics) + forgetting_table(metrics)
    data = record.get("data", {})
    train = data.get("train", {})
    what = "LoRA adapter" if adapter_only else "fine-tune"
    adapter = adapter_section(record, repo_id, adapter_only)
    extension_md = extension_section(record)
    return f"""---
license: other
license_name: coqui-public-model-license
license_link: https://coqui.ai/cpml
library_name: coqui
{base_metadata(base)}pipeline_tag: text-to-speech
tags:
- xtts
- xtts-ft
- text-to-speech
- voice-cloning
language:
{languages}
---

# {record["training"]["run_name"]} — XTTS-v2 {what}

Fine-tuned with xtts-ft {record["xtts_ft_version"]} from {base_sentence(base)}.
GPT trained for {record["training"]["gpt_steps"]} steps{decoder_line(record)} on {train.get("clips", "?")} clips
({train.get("hours", "?")} h; speakers: {", ".join(train.get("speakers", {})) or "?"}).
{checkpoint_line(record["training"])}The license is inherited from the base model (Coqui Public Model License for XTTS-v2).

{coqui_section(adapter_only)}{adapter}{extension_md}{xtts_ft_section(repo_id, adapter_only)}## Metrics

{metrics_md}

Produced by xtts-ft; see `xtts_ft.json` for the base model hash, data statistics and file hashes.
"""
