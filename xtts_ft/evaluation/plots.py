"""The evaluation report's plots, written as PNG files: metrics per language and model (with the
share of clips flagged and without a voice, so a model whose clips cannot be measured still shows
something), and synthesized against expected durations."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd


def write_plots(table: pd.DataFrame, out: Path) -> List[str]:
    """metrics.png (CER, speaker similarity, DNSMOS per language, one bar per model — "n/a" where no clip
    could be measured —, and the share of clips flagged and without a voice) and durations.png
    (synthesized against expected seconds: babbling sits far above the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    languages = list(dict.fromkeys(table["language"]))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    width = 0.8 / len(models)
    panels = [
        ("cer", "CER (ASR, a fraction)"),
        ("speaker_similarity", "speaker similarity"),
        ("dnsmos", "DNSMOS overall"),
        ("flagged", "share of clips flagged (hatched: no voice)"),
    ]
    for ax, (column, title) in zip(axes, panels):
        for k, model in enumerate(models):
            part = table[table["model"] == model].groupby("language")
            means = part[column].mean().reindex(languages)
            where = [i + k * width for i in range(len(languages))]
            ax.bar(where, means.fillna(0).values, width, label=model, color=f"C{k}")
            if column == "flagged" and "no_speech" in table:
                silent = part["no_speech"].mean().reindex(languages).fillna(0).values
                ax.bar(where, silent, width, fill=False, hatch="//", edgecolor="k", linewidth=0)
            for x, value in zip(where, means.values):
                if pd.isna(value):  # nothing measurable (no voice, no ASR): say so rather than draw an empty slot
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(languages))], languages)
        ax.set_title(title)
    axes[3].set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for model in models:
        part = table[table["model"] == model]
        ax.scatter(part["expected_seconds"], part["seconds"], label=model, s=18)
    top = max(table["expected_seconds"].max(), table["seconds"].max()) * 1.05
    for factor, style in ((1, "-"), (2, ":"), (0.5, ":")):
        ax.plot([0, top], [0, top * factor], "k" + style, linewidth=0.8)
    ax.set_xlabel("expected seconds (text length)")
    ax.set_ylabel("synthesized seconds")
    ax.set_title("duration: flagged outside the dotted lines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "durations.png", dpi=100)
    plt.close(fig)
    return ["metrics.png", "durations.png"]
