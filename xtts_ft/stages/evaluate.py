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
With several checkpoints the first is the base: `forgetting` compares every later one that was
fine-tuned from it (its export record says so) with it on the base's languages (the change in CER,
speaker similarity and flag rate); the others are compared side by side only.
Outputs, all under `out_dir` and nowhere else: utterances.csv, summary.csv (model × language),
forgetting.csv, report.md with PNG plots and the published XTTS v2.0.2 numbers beside ours
(labelled: other metric models), and metrics.json (what each model's card would record, which
`export ... metrics=<out_dir>` puts into a new export of the same model). Only `write_metrics=true` also records the summary (and the
forgetting) in each evaluated xtts-ft export's xtts_ft.json and model card — refused when a later
checkpoint is not a fine-tune of the first, whose card would name a base it never had.

The library behind it is xtts_ft.evaluation: probes (what is spoken), scoring (each model on
each probe), forgetting, plots and report.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import List

import pandas as pd
from omegaconf import DictConfig

from xtts_ft.errors import BadValue, ConfigValueError, RunRefused
from xtts_ft.evaluation.forgetting import forgetting, not_fine_tuned_from
from xtts_ft.evaluation.plots import write_plots
from xtts_ft.evaluation.probes import probe_rows
from xtts_ft.evaluation.report import evaluated_models, record_metrics, report, summarize
from xtts_ft.evaluation.scoring import evaluate_checkpoints, load_metric_models
from xtts_ft.io_utils import write_json, write_text
from xtts_ft.model.loading import resolve_model_dir

log = logging.getLogger(__name__)


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "utterances.csv", out / "summary.csv", out / "report.md"]


def checkpoints(cfg: DictConfig) -> List[str]:
    chosen = ([cfg.checkpoint] if cfg.checkpoint else []) + [c for c in cfg.checkpoints if c != cfg.checkpoint]
    if not chosen:
        raise ConfigValueError(
            "no model to evaluate", fix="give checkpoint=<export|model dir|Hub id> or checkpoints=[a,b,...]"
        )
    expanded = []
    # A pattern stands for the folders it matches, in name order (a sweep's exports).
    for checkpoint in map(str, chosen):
        matches = [checkpoint]
        if glob.has_magic(checkpoint):
            matches = sorted(p for p in glob.glob(checkpoint) if Path(p).is_dir())
        if not matches:
            raise ConfigValueError(f"{checkpoint} matches no folder", fix="check it; export a sweep's runs first")
        expanded += matches
    return expanded


def run(cfg: DictConfig) -> pd.DataFrame:
    out = Path(cfg.out_dir)
    probes = probe_rows(cfg)
    choices = load_metric_models(cfg, probes)  # a missing metric model fails now, not after the first synthesis
    if out.exists() and not out.is_dir():
        raise ConfigValueError(f"out_dir={out} is a file — fix: out_dir=<a folder> (made if missing)")
    # Every checkpoint found (or fetched) before any synthesis: a missing one fails now, not after the first model's probes.
    located = [(checkpoint, resolve_model_dir(str(checkpoint))) for checkpoint in checkpoints(cfg)]
    unrelated = not_fine_tuned_from(located) if len(located) > 1 else {}
    if cfg.write_metrics and unrelated:  # before any synthesis: a card must not name a base the model never had
        checkpoint, why = next(iter(unrelated.items()))
        raise RunRefused(
            f"write_metrics=true records what each fine-tune forgot against the first checkpoint, {located[0][0]}, "
            f"but {checkpoint} was not fine-tuned from it ({why})",
            fix=f"put its own base first (checkpoints=[<its base>,{checkpoint}]), or leave write_metrics=false "
            f"to compare them in {out} only",
        )
    rows, labels = evaluate_checkpoints(located, probes, cfg, out, choices)
    not_fine_tunes = {label: unrelated[c] for label, c in labels.items() if c in unrelated}
    if not rows:
        raise BadValue("no probe is in a language the model(s) have; see the warnings above")

    table = pd.DataFrame(rows)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "utterances.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv())
    plots = write_plots(table, out)
    forgotten = forgetting(summary, not_fine_tunes)
    write_text(out / "forgetting.csv", forgotten.to_csv(index=False))
    write_text(out / "report.md", report(cfg, table, summary, plots, labels, forgotten, not_fine_tunes))
    entries = evaluated_models(summary, cfg, table, forgotten, labels, dict(located))
    write_json(out / "metrics.json", {"models": entries})  # what `export metrics=<out_dir>` records
    if cfg.write_metrics:  # the one write outside out_dir, asked for by name
        for entry in entries:
            if Path(entry["checkpoint"]).is_dir():  # a Hub id: its copy in the Hub cache is not the user's to edit
                record_metrics(Path(entry["checkpoint"]), entry["metrics"])
    log.info(f"evaluated {len(table)} utterance(s) of {len(labels)} model(s) → {out / 'report.md'}")
    return table
