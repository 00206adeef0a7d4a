"""hf:org/name[@revision] sources: a snapshot in the local Hugging Face cache (no downloads)."""

from __future__ import annotations

from pathlib import Path


def snapshot_dir(repo: str, revision: str | None) -> Path:
    """The cached snapshot directory of `repo` at `revision` (default: main).

    Raises LookupError saying how to get the files when the cache does not hold them; the
    server runs offline and never downloads.
    """
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise LookupError("hf: sources need the huggingface_hub package") from None
    where = f"hf:{repo}" + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(repo_id=repo, revision=revision, local_files_only=True)
    except ValueError as exc:  # an invalid repo id (HFValidationError)
        raise LookupError(f"{where} is not a valid Hugging Face repo id: {exc}") from None
    except OSError:  # LocalEntryNotFoundError, or an unreadable cache
        raise LookupError(
            f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); the "
            f"server never downloads: fetch it first, e.g. `hf download {repo}`"
            + (f" --revision {revision}" if revision else "")
        ) from None
    return Path(path)
