"""Forgetting: what fine-tuning cost the base model's languages.

With several models evaluated, the first is the base; every later one that was fine-tuned from it
is compared with it on the languages both were probed in — the base's own, not the ones the
fine-tune added — by CER, speaker similarity and flag rate (the base's value, the fine-tune's, and
the change). Whether a model is a fine-tune of the first (`not_fine_tuned_from`) is read from its
export record: its base's model.pth hash, or the base that `xtts-ft extend` made its own base from.
A model that is not one is compared side by side in the summary, never as a forgetting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import pandas as pd

from xtts_ft.model.layout import read_sidecar

# What forgetting is measured by: up is worse for CER and the flag rate, down for similarity.
FORGETTING_COLUMNS = ["cer", "speaker_similarity", "flagged"]


def same_place(source: str, checkpoint: str, model_dir: Path) -> bool:
    """Whether a recorded model source names the checkpoint given (as written, or the same folder)."""
    if source == checkpoint:
        return True
    path = Path(source).expanduser()
    return path.is_dir() and path.resolve() == Path(model_dir).resolve()


def base_of(model_dir: Path) -> Optional[dict]:
    """The base an xtts-ft export records (source, model_sha256, …), None for anything else."""
    return read_sidecar(model_dir).get("base_model")


def not_fine_tuned_from(located: List[Tuple[str, Path]]) -> Dict[str, str]:
    """checkpoint -> why it is not a fine-tune of the first checkpoint, for each later one that is not:
    one is when its record names the first as its base (the same folder or Hub id, or the same
    model.pth hash), or names an extended base made from the first."""
    from xtts_ft.model.export import sha256

    (first, first_dir), problems, first_hash = located[0], {}, None
    for checkpoint, model_dir in located[1:]:
        base = base_of(model_dir)
        if not base:
            problems[checkpoint] = "it records no base model (not an xtts-ft export)"
            continue
        source = str(base.get("source"))
        extended = read_sidecar(Path(source)) if Path(source).is_dir() else {}
        below = str((extended.get("base") or {}).get("source", ""))
        if same_place(source, first, first_dir) or (below and same_place(below, first, first_dir)):
            continue
        first_hash = first_hash or sha256(Path(first_dir) / "model.pth")
        if base.get("model_sha256") == first_hash or first in (base.get("hub_id"), base.get("derived_from")):
            continue
        problems[checkpoint] = f"its base is {source}"
    return problems


def forgetting(summary: pd.DataFrame, not_fine_tunes: Iterable[str] = ()) -> pd.DataFrame:
    """The first model is the base; for every later one (a fine-tune; not those in `not_fine_tunes`)
    and every language both were probed in — the base's own languages, not the ones the fine-tune
    added — each metric of the base, of the fine-tune, and the change (fine-tune − base). Empty with
    a single model."""
    models = list(dict.fromkeys(summary.index.get_level_values(0)))
    rows = []
    for model in [m for m in models[1:] if m not in set(not_fine_tunes)]:
        base, tuned = summary.loc[models[0]], summary.loc[model]
        for language in [x for x in base.index if x in tuned.index]:
            row = {"model": model, "base": models[0], "language": language}
            for column in FORGETTING_COLUMNS:
                row.update(
                    {
                        f"{column}_base": base.loc[language, column],
                        column: tuned.loc[language, column],
                        f"{column}_change": tuned.loc[language, column] - base.loc[language, column],
                    }
                )
            row["utterances"] = int(tuned.loc[language, "utterances"])
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=["model", "base", "language"]
        + [f"{c}{suffix}" for c in FORGETTING_COLUMNS for suffix in ("_base", "", "_change")]
        + ["utterances"],
    )


def forgetting_md(forgotten: pd.DataFrame, not_fine_tunes: Optional[Dict[str, str]] = None) -> str:
    """The report's section: the table, and which models were not compared with the first (and why)."""
    skipped = "".join(
        f"\n\n`{model}` is not compared with the first model: it was not fine-tuned from it ({why})."
        for model, why in (not_fine_tunes or {}).items()
    )
    if not len(forgotten):
        return (
            "Not measured: give the base first and the fine-tune after it, `checkpoints=[<base>,<fine-tune>]`, with probes "
            "in the base's languages (e.g. `probes=sentences`)." + skipped
        )
    return (
        skipped.lstrip()
        + ("\n\n" if skipped else "")
        + (
            f"The first model, `{forgotten['base'].iloc[0]}`, is the base; each later model against it on the base's languages. "
            "`_change` = fine-tune − base: CER and flag rate up, or speaker similarity down, is what fine-tuning cost the "
            "language. `nan`: not measurable (no ASR for the language, or no voice in any clip; see below).\n\n"
            + forgotten.drop(columns="base").round(3).to_markdown(index=False)
        )
    )
