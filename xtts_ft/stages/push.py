"""Stage `push`: an export → a Hugging Face Hub model repo, with its generated model card.

What goes is the export's public view (xtts_ft.model.public): the model card and xtts_ft.json
written again with the base named by its Hub id (or by name, with a note) and the corpus by name,
and no path of this machine in any file — checked on every file sent, a push that would publish
one is refused. An `adapter=true` export sends its LoRA adapter alone (`adapter_only`, by default
when its base is on the Hub), with a card that shows how to load base + adapter.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`); it is never
printed or logged, and never sent over plain http (except to this machine). `dry_run=true` lists
exactly the files and the card that would be sent, and what the repo's visibility will be.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

from omegaconf import DictConfig

from xtts_ft.errors import MissingFile, RunRefused
from xtts_ft.model.layout import EXPORT_FILES, STOCK_FILES, check_layout
from xtts_ft.model.loading import hub_endpoint
from xtts_ft.model.publish import public_payload, size_mib

log = logging.getLogger(__name__)


def outputs(cfg: DictConfig) -> List[Path]:
    return []  # nothing local: the pipeline always re-runs a push it is asked for


def files_to_send(export_dir: Path) -> List[Path]:
    check_layout(export_dir, required=STOCK_FILES)
    if not (export_dir / "README.md").is_file():
        raise MissingFile(f"{export_dir} has no README.md model card", fix="export it with `xtts-ft export` first")
    return [export_dir / name for name in EXPORT_FILES if (export_dir / name).is_file()]


def network_errors() -> Tuple[type, ...]:
    """What the network and the Hub raise (connection, HTTP status, offline mode, no token): these,
    and only these, are the user's to fix; anything else is a bug and is raised as itself."""
    from huggingface_hub import errors

    return (OSError, errors.HTTPError)  # HTTPError: the transport's base error, which huggingface_hub re-raises


def hub_failure(where: str, err: Exception) -> RunRefused:
    status = getattr(getattr(err, "response", None), "status_code", None)
    first_line = str(err).splitlines()[0] if str(err) else ""
    if status in (401, 403):
        fix = "log in with `hf auth login` or set HF_TOKEN, with a token that may write to this repo"
    elif status:
        fix = f"the Hub answered HTTP {status}"
    else:
        fix = "check the network (or endpoint=), and log in with `hf auth login` or set HF_TOKEN"
    return RunRefused(
        f"push to {where} failed ({type(err).__name__}: {first_line}). Fix: {fix}; dry_run=true shows what would be sent."
    )


def visibility(api, cfg: DictConfig) -> Tuple[str, Optional[str]]:
    """(what the push will really do about visibility, a reason to refuse or None).

    create_repo(exist_ok=True) leaves an existing repo as it is: private=true does not make a
    public repo private, so pushing there would publish what the user meant to keep private.
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    wanted = "private" if cfg.private else "public"
    try:
        info = api.repo_info(cfg.repo_id, repo_type="model")
    except RepositoryNotFoundError:
        return f"a new {wanted} repo", None
    actual = "private" if info.private else "public"
    if info.private or not cfg.private:
        note = (
            "" if actual == wanted else f" (private={cfg.private} does not change an existing repo: it stays {actual})"
        )
        return f"the existing {actual} repo{note}", None
    return f"the existing {actual} repo", (
        f"{cfg.repo_id} exists and is public, but private=true: pushing would publish this model. "
        "Pass private=false to publish it there, make the repo private on the Hub first, or choose another repo_id."
    )


def run(cfg: DictConfig) -> List[Path]:
    export_dir = Path(cfg.export_dir)
    if not export_dir.is_dir():
        raise MissingFile(f"export {export_dir} does not exist", fix="run `xtts-ft export run_name=...` first")
    payload, what = public_payload(export_dir, files_to_send(export_dir), cfg.repo_id, cfg.adapter_only)
    files = [export_dir / name for name in payload]
    endpoint = hub_endpoint(cfg.endpoint)
    where = f"{endpoint}/{cfg.repo_id}"
    listing = (f"  sending {what}\n" if what else "") + "\n".join(
        f"  {name:<26} {size_mib(content):10.1f} MiB" for name, content in payload.items()
    )

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint)
    try:
        repo, refusal = visibility(api, cfg)
    except network_errors() as err:
        if not cfg.dry_run:
            raise hub_failure(where, err) from None
        repo, refusal = (
            f"could not check whether it exists ({type(err).__name__}): new → {'private' if cfg.private else 'public'}, existing → unchanged",
            None,
        )
    if cfg.dry_run:
        card = payload["README.md"].decode() if isinstance(payload.get("README.md"), bytes) else ""
        log.info(f"dry run: would push to {where} ({repo}, branch {cfg.revision or 'main'}):\n{listing}")
        if refusal:
            log.info(f"but the push would be refused: {refusal}")
        log.info(f"\n--- README.md (model card) ---\n{card}")
        return files
    if refusal:
        raise RunRefused(refusal)
    try:
        api.create_repo(cfg.repo_id, repo_type="model", private=cfg.private, exist_ok=True)
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="model", exist_ok=True)
        commit = api.create_commit(
            repo_id=cfg.repo_id,
            operations=[
                CommitOperationAdd(name, content if isinstance(content, bytes) else str(content))
                for name, content in payload.items()
            ],
            repo_type="model",
            revision=cfg.revision,
            commit_message=cfg.commit_message,
        )
    except network_errors() as err:  # offline, no token, no rights: one clear message, never the token
        raise hub_failure(where, err) from None
    log.info(
        f"pushed {len(files)} files to {where} ({repo}):\n{listing}\ncommit: {getattr(commit, 'commit_url', commit)}"
    )
    return files
