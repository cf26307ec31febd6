"""What of an export may go public: the export record (xtts_ft.json) and PEFT's adapter config with
every path of the user's machine replaced by a Hub id or a name, and the check that nothing sent
still holds one.

The export folder keeps its provenance (where the base model and the corpus lay on this machine)
for later local loads; `push` sends `public_record` instead, and refuses a file in which
`local_paths_in` still finds a local path (the working directory, the home, where the export lies).
A base model is public by its Hub id (`hub_id`: the source was one, or a Hub cache snapshot of one),
or, for a base extended from a Hub model, by that model (`derived_from`); otherwise by its folder's
name, with its model.pth hash.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from xtts_ft.model.loading import looks_like_hub_id

# A Hub cache snapshot: …/models--<owner>--<name>/snapshots/<commit>
HUB_SNAPSHOT = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]([0-9a-f]{40})")
PATH_TOKEN = re.compile(r"[^\s`'\"(),;|]+")  # a path inside a sentence ends at a space, a quote or a bracket


def hub_id_of(source: object, local_dir: Optional[Path] = None) -> Tuple[Optional[str], Optional[str]]:
    """(Hub id, revision) of a model: a Hub id as given (not a folder here), or the Hub cache snapshot it was
    read from (`local_dir`, or the source itself); (None, None) for a model that is only on this machine."""
    for where in (local_dir, source):
        found = HUB_SNAPSHOT.search(str(where)) if where is not None else None
        if found:
            return f"{found.group(1)}/{found.group(2)}", found.group(3)
    text = str(source)
    if looks_like_hub_id(text) and not Path(text).expanduser().exists():
        return text, None
    return None, None


def is_local_path(text: str) -> bool:
    """Whether a string names a place on this machine (absolute, home- or dot-relative, deeper than
    owner/name, or an existing relative path), rather than a Hub id, a URL or a plain name."""
    if "://" in text or "/" not in text.replace("\\", "/"):
        return False
    # owner/name may be a Hub id; deeper relative paths, absolute ones and those that exist here are places.
    return not looks_like_hub_id(text) or Path(text).exists()


def local_name(text: str) -> str:
    return Path(text.replace("\\", "/")).name or text


def public_text(text: str) -> str:
    """A sentence with each local path in it replaced by its last component (a Hub id or URL stays)."""
    return PATH_TOKEN.sub(lambda m: local_name(m.group(0)) if is_local_path(m.group(0)) else m.group(0), text)


def public_base(base: dict) -> dict:
    """A base model as the public sees it: `source` is its Hub id, else its folder's name; `hub_id`,
    `revision` and `derived_from` say what the Hub has of it."""
    source = str(base.get("source", ""))
    hub_id, revision = (base.get("hub_id"), base.get("revision")) if "hub_id" in base else hub_id_of(source)
    public = {key: value for key, value in base.items() if key not in ("source", "hub_id", "revision")}
    public.update(source=hub_id or local_name(source), hub_id=hub_id, revision=revision)
    if public.get("derived_from") and is_local_path(str(public["derived_from"])):
        public["derived_from"] = None
    return public


def public_sources(sources: Iterable[str]) -> List[str]:
    """Corpus folders named relative to their common root (`demo/en`, `demo/fr`); a Hub dataset id stays."""
    sources = [str(s) for s in sources]
    local = sorted({str(Path(s).expanduser().resolve()) for s in sources if is_local_path(s)})
    kept = sorted({s for s in sources if not is_local_path(s)})
    if not local:
        return kept
    root = Path(local[0]) if len(local) == 1 else Path(_common_root(local))
    names = [root.name if Path(p) == root else f"{root.name}/{Path(p).relative_to(root).as_posix()}" for p in local]
    return sorted(set(names)) + kept


def _common_root(paths: List[str]) -> str:
    import os

    return os.path.commonpath(paths)


def _public_strings(value):
    """Every string of a JSON value through public_text."""
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, list):
        return [_public_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _public_strings(v) for k, v in value.items()}
    return value


def public_record(record: dict) -> dict:
    """The export record as it is published: the base by Hub id or name, the corpus folders by name,
    and every other local path (an ASR model's folder, a forgetting base, the decoder's GPT) by its name."""
    public = copy.deepcopy(record)
    if "base_model" in public:
        public["base_model"] = public_base(public["base_model"])
    adapter = public.get("adapter")
    if adapter and "base_model" in adapter:
        same = {k: v for k, v in (record.get("base_model") or {}).items() if k != "model_sha256"}
        adapter["base_model"] = public_base({**same, **adapter["base_model"]})
    data = public.get("data") or {}
    data.pop("config", None)  # the prepare settings, with the corpus paths: the statistics are what matters
    if "source_paths" in data:
        data["source_paths"] = public_sources(data["source_paths"])
    forgetting = (public.get("metrics") or {}).get("forgetting") or {}
    if forgetting.get("base") and is_local_path(str(forgetting["base"])):
        forgetting["base"] = local_name(str(forgetting["base"]))
    return _public_strings(public)


def public_adapter_config(raw: bytes, base: dict) -> bytes:
    """PEFT's adapter_config.json with `base_model_name_or_path` the base's Hub id or name."""
    config = json.loads(raw)
    config["base_model_name_or_path"] = public_base(base)["source"]
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def readable_parts(name: str, content: Union[Path, bytes]) -> List[bytes]:
    """The parts of a file that can hold text: a torch zip's pickles, a safetensors header, else the
    file (the weights themselves are never read whole)."""
    import io

    opened = io.BytesIO(content) if isinstance(content, bytes) else open(content, "rb")
    with opened as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as archive:
                return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        f.seek(0)
        if name.endswith(".safetensors"):
            return [f.read(int.from_bytes(f.read(8), "little"))]
        return [f.read()]


def local_paths_in(name: str, content: Union[Path, bytes], places: Iterable[str]) -> List[str]:
    """The paths of this machine that a file's text holds (a pickle's strings, a safetensors header, a JSON or
    Markdown file): any of `places` (absolute, or relative ones like `models/tiny-xtts`), and any absolute path
    in it that exists here."""
    parts = readable_parts(name, content)
    found = {p for p in places if p and any(p.encode() in part for part in parts)}
    for part in parts:
        for token in PATH_TOKEN.findall(part.decode("utf-8", errors="ignore")):
            token = token.rstrip(".:")
            if token.startswith(("/", "~/")) and len(Path(token).parts) >= 3 and Path(token).expanduser().exists():
                found.add(token)
    return sorted(found)


def public_files(export_dir: Path, names: Iterable[str], public: dict, card: str) -> Dict[str, Union[Path, bytes]]:
    """What goes to the Hub, name -> the file or its public content: the card and the record rewritten,
    PEFT's adapter config with its base named publicly, every other file as it is."""
    from xtts_ft.model.layout import SIDECAR

    files: Dict[str, Union[Path, bytes]] = {}
    for name in names:
        if name == "README.md":
            files[name] = card.encode()
        elif name == SIDECAR:
            files[name] = (json.dumps(public, indent=2, ensure_ascii=False) + "\n").encode()
        elif name == "adapter_config.json" and public.get("adapter"):
            files[name] = public_adapter_config((export_dir / name).read_bytes(), public["adapter"]["base_model"])
        else:
            files[name] = export_dir / name
    return files


def local_places(export_dir: Path, record: dict) -> List[str]:
    """What must not appear in a pushed file: the working directory, the home, the folder of the
    export, and every local path the record names (as written, e.g. `models/tiny-xtts`, and resolved)."""
    import os

    written = [str((record.get("base_model") or {}).get("source", ""))]
    written += [str(s) for s in (record.get("data") or {}).get("source_paths", [])]
    places = {os.getcwd(), str(Path.home()), str(Path(export_dir).resolve().parent)}
    for text in filter(is_local_path, written):
        places |= {text, str(Path(text).expanduser().resolve())}
    return sorted(p for p in places if len(Path(p).parts) > 2 or (not p.startswith("/") and "/" in p))
