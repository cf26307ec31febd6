"""The model card (README.md) of an export: what the model is, how it was made, how it scores.

Written by `export` from the export record (xtts_ft.json), and again by `evaluate` when it adds
metrics and forgetting to that record; plain functions of the record, so both stages share it
without importing each other."""

from __future__ import annotations


def metrics_table(metrics: dict) -> str:
    """The summary `xtts-ft evaluate` recorded, one row per language; or a note that there is none."""
    per_language = metrics.get("per_language") or {}
    if not per_language:
        return "Not evaluated yet: `xtts-ft evaluate checkpoint=<this directory> ...` fills this section."
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
        f"Probes: {metrics.get('probes', '?')}; evaluated {metrics.get('evaluated_at', '?')}. ASR `{models.get('asr')}`, "
        f"speaker similarity {models.get('speaker')}, quality {models.get('quality')}: not the XTTS paper's models "
        "(Whisper large-v3, ECAPA2, UTMOS), so not comparable to its published numbers.",
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


def adapter_section(record: dict) -> str:
    """For an export with `adapter=true`: the PEFT LoRA files beside the merged model, and the base they apply to."""
    adapter = record.get("adapter")
    if not adapter:
        return ""
    base = adapter["base_model"]
    return f"""## The LoRA adapter

`model.pth` already holds the adapter merged into the GPT: the sections above load it as an ordinary XTTS-v2.
The adapter itself is here too, in 🤗 PEFT's format ({", ".join(f"`{name}`" for name in adapter["files"])}: rank
{adapter["rank"]}, alpha {adapter["alpha"]}, on {", ".join(adapter["targets"])}), for use over its base model,
`{base["source"]}` (model.pth sha256 `{base["model_sha256"][:12]}…`; another base is refused):

```python
from xtts_ft.inference import XttsSynthesizer

synth = XttsSynthesizer("{base["source"]}", adapter=".")  # the base, with this adapter on its GPT
```

"""


def model_card(record: dict) -> str:
    # The Hub's metadata wants ISO 639-1 codes: XTTS's "zh-cn" is "zh" there.
    languages = "\n".join(f"- {lang.split('-')[0]}" for lang in record["languages"])
    base = record["base_model"]
    metrics = record.get("metrics") or {}
    metrics_md = metrics_table(metrics) + forgetting_table(metrics)
    extension_md = extension_section(record)
    data = record.get("data", {})
    train = data.get("train", {})
    return f"""---
license: other
license_name: coqui-public-model-license
license_link: https://coqui.ai/cpml
library_name: coqui
base_model: {base["source"]}
pipeline_tag: text-to-speech
tags:
- xtts
- xtts-ft
- text-to-speech
- voice-cloning
language:
{languages}
---

# {record["training"]["run_name"]} — XTTS-v2 fine-tune

Fine-tuned from `{base["source"]}` ({base["kind"]}) with xtts-ft {record["xtts_ft_version"]}:
GPT trained for {record["training"]["gpt_steps"]} steps{decoder_line(record)} on {train.get("clips", "?")} clips
({train.get("hours", "?")} h; speakers: {", ".join(train.get("speakers", {})) or "?"}).
The license is inherited from the base model (Coqui Public Model License for XTTS-v2).

## Use with coqui-tts

```python
from TTS.tts.configs.xtts_config import XttsConfig
from TTS.tts.models.xtts import Xtts

config = XttsConfig()
config.load_json("config.json")
model = Xtts(config)
model.load_checkpoint(config, checkpoint_dir=".", eval=True)
out = model.synthesize("Hello!", speaker_wav="reference.wav", language="en")
```

{extension_md}{adapter_section(record)}## Use with xtts-ft

```bash
xtts-ft synth checkpoint=. text="Hello!" language=en reference=reference.wav out=hello.wav
```

## Metrics

{metrics_md}

Produced by xtts-ft; see `xtts_ft.json` for the base model hash, data statistics and file hashes.
"""
