"""Stage `evaluate`: synthesize probe sets with one or more checkpoints and measure them.

Probes: a prepared eval manifest (each row's text, language and recording — the recording is
the voice reference), and/or a probe set shipped with the package (`probes=sentences|short`,
per-language sentences; `short` is one- to three-word utterances, where fine-tunes babble),
spoken in the voice of `reference=`. Every checkpoint (an export, a model directory, a Hub id)
speaks every probe in a language it has, through the shared inference module.

Per utterance: CER/WER through the ASR configured for its language (`asr=`, xtts_ft.evaluation.asr; a
language without one is "not scored (no ASR for xx)"), speaker similarity to the reference,
DNSMOS, the duration against the recording and against a per-language expectation from the text,
ASR insertions and deletions, a hallucination/truncation flag with its reasons, real-time factor,
loudness, whether the GPT stopped by itself. A clip in which no voice is detected gets NaN
similarity, DNSMOS and UTMOS with the flag `no_speech` (left out of the means, counted in the
summary); a clip the ASR hears nothing in gets CER 1 with the flag `asr_heard_nothing`.
With several checkpoints the first is the base: `forgetting` compares every later one (a fine-tune)
with it on the base's languages (the change in CER, speaker similarity and flag rate).
Outputs: utterances.csv, summary.csv (model × language), forgetting.csv, report.md
with PNG plots and the published XTTS v2.0.2 numbers beside ours (labelled: other metric models),
and — for exports made by xtts-ft — the summary in their xtts_ft.json and model card.

The library behind it is xtts_ft.evaluation: probes (what is spoken), scoring (each model on
each probe), forgetting, plots and report.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd
from omegaconf import DictConfig

from xtts_ft.errors import BadValue, ConfigValueError
from xtts_ft.evaluation.forgetting import forgetting
from xtts_ft.evaluation.plots import write_plots
from xtts_ft.evaluation.probes import probe_rows
from xtts_ft.evaluation.report import record_metrics, report, summarize
from xtts_ft.evaluation.scoring import evaluate_checkpoints, load_metric_models
from xtts_ft.io_utils import write_text
from xtts_ft.model.loading import resolve_model_dir


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "utterances.csv", out / "summary.csv", out / "report.md"]


def checkpoints(cfg: DictConfig) -> List[str]:
    chosen = ([cfg.checkpoint] if cfg.checkpoint else []) + [c for c in cfg.checkpoints if c != cfg.checkpoint]
    if not chosen:
        raise ConfigValueError("give checkpoint=<export|model dir|Hub id> or checkpoints=[a,b,...]")
    return [str(c) for c in chosen]


def run(cfg: DictConfig) -> pd.DataFrame:
    out = Path(cfg.out_dir)
    probes = probe_rows(cfg)
    choices = load_metric_models(cfg, probes)  # a missing metric model fails now, not after the first synthesis
    if out.exists() and not out.is_dir():
        raise ConfigValueError(f"out_dir={out} is a file — fix: out_dir=<a folder> (made if missing)")
    # Every checkpoint found (or fetched) before any synthesis: a missing one fails now, not after the first model's probes.
    located = [(checkpoint, resolve_model_dir(str(checkpoint))) for checkpoint in checkpoints(cfg)]
    rows, labels = evaluate_checkpoints(located, probes, cfg, out, choices)
    if not rows:
        raise BadValue("no probe is in a language the model(s) have; see the warnings above")

    table = pd.DataFrame(rows)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "utterances.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv())
    plots = write_plots(table, out)
    forgotten = forgetting(summary)
    write_text(out / "forgetting.csv", forgotten.to_csv(index=False))
    write_text(out / "report.md", report(cfg, table, summary, plots, labels, forgotten))
    if cfg.write_metrics:
        for label, checkpoint in labels.items():
            record_metrics(
                Path(checkpoint),
                summary.loc[label] if label in summary.index.get_level_values(0) else None,
                cfg,
                table,
                forgotten[forgotten["model"] == label] if len(forgotten) else None,
                labels,
            )
    print(f"evaluated {len(table)} utterance(s) of {len(labels)} model(s) → {out / 'report.md'}")
    return table
