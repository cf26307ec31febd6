"""Forgetting: what fine-tuning cost the base model's languages.

With several models evaluated, the first is the base; every later one (a fine-tune) is compared
with it on the languages both were probed in — the base's own, not the ones the fine-tune added —
by CER, speaker similarity and flag rate (the base's value, the fine-tune's, and the change).
"""

from __future__ import annotations

import pandas as pd

# What forgetting is measured by: up is worse for CER and the flag rate, down for similarity.
FORGETTING_COLUMNS = ["cer", "speaker_similarity", "flagged"]


def forgetting(summary: pd.DataFrame) -> pd.DataFrame:
    """The first model is the base; for every later one (a fine-tune) and every language both were
    probed in — the base's own languages, not the ones the fine-tune added — each metric of the base,
    of the fine-tune, and the change (fine-tune − base). Empty with a single model."""
    models = list(dict.fromkeys(summary.index.get_level_values(0)))
    rows = []
    for model in models[1:]:
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


def forgetting_md(forgotten: pd.DataFrame) -> str:
    if not len(forgotten):
        return (
            "Not measured: give the base first and the fine-tune after it, `checkpoints=[<base>,<fine-tune>]`, with probes "
            "in the base's languages (e.g. `probes=sentences`)."
        )
    return (
        f"The first model, `{forgotten['base'].iloc[0]}`, is the base; each later model against it on the base's languages. "
        "`_change` = fine-tune − base: CER and flag rate up, or speaker similarity down, is what fine-tuning cost the "
        "language. `nan`: not measurable (no ASR for the language, or no voice in any clip; see below).\n\n"
        + forgotten.drop(columns="base").round(3).to_markdown(index=False)
    )
