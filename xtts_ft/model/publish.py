"""What `push` sends: the whole export or, for an `adapter=true` export, the adapter alone
(`adapter_only`), each file as it is or in its public form (the card, xtts_ft.json and PEFT's
adapter config, xtts_ft.model.public), and the check that none holds a path of this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from xtts_ft.errors import BadValue, RunRefused
from xtts_ft.model.card import base_hub_id, model_card
from xtts_ft.model.layout import ADAPTER_FILES, SIDECAR, read_sidecar
from xtts_ft.model.public import local_paths_in, local_places, public_files, public_record


def adapter_only(setting: Optional[bool], export_dir: Path, record: dict, files: List[Path]) -> Tuple[bool, str]:
    """(send the adapter alone?, what goes): by default an adapter export whose base is on the Hub sends
    only the adapter, since anyone can load base + adapter; one over a local base sends everything."""
    has_adapter = bool(record.get("adapter")) and set(ADAPTER_FILES) <= {f.name for f in files}
    if not has_adapter:
        if setting:
            raise BadValue(
                f"adapter_only=true: {export_dir} has no LoRA adapter",
                fix="export a train-gpt method=lora run with adapter=true, or leave adapter_only unset",
            )
        return False, ""
    on_hub = base_hub_id(record["base_model"])
    if setting is None:
        if on_hub:
            return True, f"the adapter alone (its base {on_hub} is on the Hub; adapter_only=false sends model.pth too)"
        return (
            False,
            "the merged model and the adapter (the base is not on the Hub; adapter_only=true sends the adapter alone)",
        )
    if setting and not on_hub:
        return True, "the adapter alone; its base is not on the Hub: whoever loads it needs that base's folder"
    return bool(setting), "the adapter alone" if setting else "the merged model and the adapter"


def public_payload(
    export_dir: Path, files: List[Path], repo_id: str, setting: Optional[bool]
) -> Tuple[Dict[str, Union[Path, bytes]], str]:
    """name -> what is sent (a file, or the public card / record / adapter config), and a line saying what
    goes; refused when a file would still publish a path of this machine."""
    record = read_sidecar(export_dir)
    if not record:  # not made by xtts-ft export: sent as it is, still checked below
        payload, what = {f.name: f for f in files}, ""
    else:
        alone, what = adapter_only(setting, export_dir, record, files)
        names = [f.name for f in files if not alone or f.name in (*ADAPTER_FILES, SIDECAR, "README.md")]
        public = public_record(record)
        payload = public_files(export_dir, names, public, model_card(public, repo_id, adapter_only=alone))
    places = local_places(export_dir, record)
    for name, content in payload.items():
        leaked = local_paths_in(name, content, places)
        if leaked:
            raise RunRefused(
                f"{name} of {export_dir} holds {leaked[0]}, a path of this machine: pushing would publish it",
                fix=f"remove it from {name} (or export again with this xtts-ft, which keeps paths out of what it sends)",
            )
    return payload, what


def size_mib(content: Union[Path, bytes]) -> float:
    return (len(content) if isinstance(content, bytes) else content.stat().st_size) / 2**20
