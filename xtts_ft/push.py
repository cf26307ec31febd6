"""Stage `push`: an export → a Hugging Face Hub model repo, with its generated model card.

The token comes from huggingface_hub's usual places (HF_TOKEN, `hf auth login`); it is never
printed or logged. `dry_run=true` lists exactly the files and the card that would be sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from omegaconf import DictConfig

from xtts_ft.model.layout import SIDECAR, STOCK_FILES, check_layout

# What an export may hold beyond the stock files; anything else in the folder stays local.
EXTRA_FILES = (SIDECAR, "README.md", "model.safetensors")


def outputs(cfg: DictConfig) -> List[Path]:
    return []  # nothing local: the pipeline always re-runs a push it is asked for


def files_to_send(export_dir: Path) -> List[Path]:
    check_layout(export_dir, required=STOCK_FILES)
    if not (export_dir / "README.md").is_file():
        raise FileNotFoundError(f"{export_dir} has no README.md model card; export it with `xtts-ft export` first")
    return [export_dir / name for name in (*STOCK_FILES, *EXTRA_FILES) if (export_dir / name).is_file()]


def run(cfg: DictConfig) -> List[Path]:
    export_dir = Path(cfg.export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"export {export_dir} does not exist; run `xtts-ft export run_name=...` first")
    files = files_to_send(export_dir)
    where = f"https://huggingface.co/{cfg.repo_id}" if not cfg.endpoint else f"{cfg.endpoint.rstrip('/')}/{cfg.repo_id}"
    listing = "\n".join(f"  {f.name:<20} {f.stat().st_size / 2**20:10.1f} MiB" for f in files)
    if cfg.dry_run:
        card = (export_dir / "README.md").read_text(encoding="utf-8")
        print(f"dry run: would push to {where} ({'private' if cfg.private else 'public'}, branch {cfg.revision or 'main'}):\n{listing}")
        print(f"\n--- README.md (model card) ---\n{card}")
        return files

    from huggingface_hub import HfApi

    api = HfApi(endpoint=cfg.endpoint)
    try:
        api.create_repo(cfg.repo_id, repo_type="model", private=cfg.private, exist_ok=True)
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=str(export_dir),
            repo_type="model",
            revision=cfg.revision,
            commit_message=cfg.commit_message,
            allow_patterns=[f.name for f in files],
        )
    except Exception as err:  # offline, no token, no rights: one clear message, never the token
        raise RuntimeError(
            f"push to {where} failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Check the network, and log in with `hf auth login` or set HF_TOKEN; dry_run=true shows what would be sent."
        ) from None
    print(f"pushed {len(files)} files to {where}:\n{listing}\ncommit: {getattr(commit, 'commit_url', commit)}")
    return files
