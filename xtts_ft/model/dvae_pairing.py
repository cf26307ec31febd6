"""Which DVAE a GPT belongs to (issue 34): a GPT predicts the codes of the DVAE it trained on, so it
must never silently meet another one.

A DVAE is named by a directory holding dvae.pth + mel_stats.pth (a base model, an export, or a
`train-dvae` run's runs/<name>/dvae) and identified by `loading.dvae_hash` alone. Every GPT and
decoder run records the hash and directory of its DVAE ("dvae_hash", "dvae_dir"); a run from before
that records neither and means its base's. This module resolves a `dvae=` setting, reads what a run
recorded, says how far two DVAEs' codes drift apart (measured by train-dvae, in <run>/dvae.json), and
refuses the pairs that cannot work: an export shipping a DVAE its GPT (or decoder) did not train on, a
decoder teacher-forcing a GPT on another DVAE's codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from xtts_ft.errors import BadValue, MissingFile, RunRefused
from xtts_ft.model.loading import dvae_hash

DVAE_FILES = ("dvae.pth", "mel_stats.pth")
RUN_RECORD = "dvae.json"  # what train-dvae writes last beside its dvae.pth: metrics.code_drift among them
RECORD_KIND = "xtts-ft-dvae"
RETRAIN_FIX = (
    "train the GPT on the new DVAE's codes (xtts-ft train-gpt ... dvae=<dir>), "
    "or export with the DVAE the GPT trained on (dvae=null)"
)


def short(hash_: str) -> str:
    """A DVAE hash as messages print it."""
    return f"{hash_[:12]}…"


def dvae_dir_of(choice: Optional[str], model_dir: Path, setting: str = "dvae") -> Path:
    """`dvae=<choice>`: null is the base model's own DVAE (`model_dir`); else a directory holding
    dvae.pth and mel_stats.pth, refused in one line when it does not."""
    if choice is None or str(choice) == "":
        return Path(model_dir)
    path = Path(str(choice)).expanduser()
    fix = f"{setting}=null (the base's DVAE), or a directory holding {' and '.join(DVAE_FILES)} (a train-dvae run's runs/<name>/dvae)"
    if path.is_file():
        raise BadValue(
            f"{setting}={choice} is a file; a DVAE is the directory holding {' and '.join(DVAE_FILES)}",
            fix=f"{setting}={path.parent}",
        )
    if not path.is_dir():
        raise MissingFile(f"{setting}={choice}: no such directory", fix=fix)
    missing = [name for name in DVAE_FILES if not (path / name).is_file()]
    if missing:
        if all((path / "dvae" / name).is_file() for name in DVAE_FILES):  # the run's folder, not its dvae/
            fix = f"{setting}={path / 'dvae'}"
        raise MissingFile(f"{setting}={choice}: {path} holds no {' and no '.join(missing)}", fix=fix)
    return path


def recorded_dvae(record: Optional[dict], base_dir: Path) -> tuple[str, Path]:
    """(hash, directory) of the DVAE whose codes a run trained on, from its state or checkpoint;
    a run from before runs recorded it (or no run: the base's own GPT) means the base's DVAE."""
    record = record or {}
    if not record.get("dvae_hash"):
        return dvae_hash(base_dir), Path(base_dir)
    recorded_dir = Path(record.get("dvae_dir") or base_dir)
    if record.get("base_model_dir") and recorded_dir.resolve() == Path(record["base_model_dir"]).resolve():
        recorded_dir = Path(base_dir)  # the base itself: where it lies now (runs/ may have moved)
    return record["dvae_hash"], recorded_dir


def run_record(dvae_dir: Path) -> Optional[dict]:
    """A train-dvae run's dvae.json, when it describes the dvae.pth beside it (else None: a base model,
    or a record a killed run left behind its newer weights)."""
    path = Path(dvae_dir) / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        return None
    if record.get("dvae_hash") != dvae_hash(dvae_dir):
        return None
    return record


def drift_phrase(old_hash: str, new_hash: str, new_dir: Path, old_dir: Optional[Path] = None) -> str:
    """How many held-out codes change between the two DVAEs, as train-dvae measured it (the dvae.json of
    either one whose base is the other), else what was measured against another base, else nothing."""
    fallback = None
    for where in (new_dir, old_dir):
        record = run_record(where) if where is not None else None
        if record is None:
            continue
        drift = (record.get("metrics") or {}).get("code_drift")
        if drift is None:
            continue
        source = Path(where) / RUN_RECORD
        if {record["dvae_hash"], record.get("base_dvae_hash")} == {old_hash, new_hash}:
            return f"changes {100 * float(drift):.1f} % of held-out codes ({source})"
        if fallback is None and Path(where) == Path(new_dir):
            base = record.get("base_dvae_hash") or "?"
            fallback = (
                f"changes {100 * float(drift):.1f} % of held-out codes of its base DVAE {short(base)} ({source})"
            )
    return fallback or f"drift not measured (no {RUN_RECORD} of train-dvae compares the two)"


def retrain_warning(weights_where: str, old_hash: str, new_hash: str, new_dir: Path, old_dir: Optional[Path]) -> str:
    """The warning of a train-gpt whose starting (or resumed) GPT weights learnt another DVAE's codes."""
    drift = drift_phrase(old_hash, new_hash, new_dir, old_dir)
    return (
        f"the GPT weights in {weights_where} were trained on DVAE codes {short(old_hash)}; this run's DVAE "
        f"{short(new_hash)} ({new_dir}) {drift}: the GPT must retrain on them"
    )


def setting_of(dvae_dir: Path, base_dir: Path) -> str:
    """The `dvae=` value that names this DVAE: null for the base's own."""
    return "null" if Path(dvae_dir).resolve() == Path(base_dir).resolve() else str(dvae_dir)


def check_teacher_dvae(gpt_name: str, gpt_hash: str, gpt_dir: Path, new_hash: str, new_dir: Path, base_dir: Path):
    """train-decoder teacher-forces the GPT on DVAE codes: they must be those of the DVAE it trained on.
    `gpt_name` says which GPT (e.g. "GPT in runs/x/gpt/state.pt")."""
    if gpt_hash == new_hash:
        return
    retrain = f"train the GPT on this DVAE first (xtts-ft train-gpt ... dvae={setting_of(new_dir, base_dir)})"
    changed = Path(gpt_dir).resolve() == Path(new_dir).resolve()  # its files changed since (train-dvae went on)
    raise RunRefused(
        f"the {gpt_name} was trained on the codes of DVAE {short(gpt_hash)}, not on those of this run's DVAE "
        f"{short(new_hash)} ({new_dir}{', changed since' if changed else ''}): the decoder would learn the latents "
        "of codes the GPT never read",
        fix=retrain if changed else f"dvae={setting_of(gpt_dir, base_dir)} (the GPT's DVAE), or {retrain}",
    )


def shipped_dvae(
    choice: Optional[str],
    state: Optional[dict],
    decoder_state: Optional[dict],
    base_dir: Path,
    gpt_where: Path,
    decoder_where: Path,
) -> tuple[Path, str]:
    """(directory, hash) of the DVAE an export ships: dvae=null is the one the GPT trained on (the base's
    when only the decoder trained); refused when the GPT or the decoder run trained on another."""
    gpt_hash, gpt_dir = recorded_dvae(state, base_dir)
    if choice is None and not all((gpt_dir / name).is_file() for name in DVAE_FILES):
        raise MissingFile(
            f"the DVAE the GPT in {gpt_where} trained on ({gpt_dir}, {short(gpt_hash)}) is gone",
            fix="dvae=<a directory holding that DVAE's dvae.pth and mel_stats.pth>",
        )
    dvae_dir = dvae_dir_of(choice, gpt_dir)
    hash_ = dvae_hash(dvae_dir)
    gpt_name = f"GPT in {gpt_where}" if state else f"base GPT of {base_dir}"
    if hash_ != gpt_hash:
        drift = drift_phrase(gpt_hash, hash_, dvae_dir, gpt_dir)
        if choice is None:  # the very directory the GPT trained on, whose files changed since (train-dvae went on)
            raise RunRefused(
                f"{dvae_dir} changed since the {gpt_name} trained on its codes: DVAE {short(gpt_hash)} then, "
                f"{short(hash_)} now, which {drift}",
                fix=f"train the GPT on the DVAE as it is now (xtts-ft train-gpt ... dvae={setting_of(dvae_dir, base_dir)})",
            )
        raise RunRefused(
            f"the DVAE to ship, {short(hash_)} ({dvae_dir}), is not the one the {gpt_name} trained on, "
            f"{short(gpt_hash)}: it {drift}",
            fix=RETRAIN_FIX,
        )
    if decoder_state is not None:
        decoder_hash, _ = recorded_dvae(decoder_state, base_dir)
        if decoder_hash != hash_:
            raise RunRefused(
                f"the DVAE to ship, {short(hash_)} ({dvae_dir}), is not the one the decoder in {decoder_where} "
                f"was trained on, {short(decoder_hash)}",
                fix=f"train the decoder again on the GPT's DVAE (xtts-ft train-decoder ... "
                f"dvae={setting_of(dvae_dir, base_dir)})",
            )
    return dvae_dir, hash_
