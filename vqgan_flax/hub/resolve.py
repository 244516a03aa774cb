"""Where a model's files are: a local folder, or a Hugging Face Hub repo id resolved to a folder of
the local Hub cache (downloading what is missing, or reading the cache only when offline).

Every entry point that accepts a model (``from_pretrained`` on both bases, ``VQGAN``, the command
line's ``--model`` / ``--init-from``, token files that record a Hub id) resolves it here, so a Hub
id and the folder it resolves to load the same files, and the commit a branch or tag resolved to
is known (token files record it).

Imports only ``huggingface_hub`` (at call time) and the standard library.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Sequence, Union

from ..utils.weights import (
    FLAX_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_CANDIDATES,
    no_weights_message,
    shard_names_of,
)

CONFIG_NAME = "config.json"
PROCESSOR_NAME = "preprocessor_config.json"
# huggingface_hub's cache keeps each commit's files in .../snapshots/<40 hex digits>/.
_SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")
# A repo id: "name" or "org/name" of letters, digits, '-', '_', '.' (huggingface_hub's rule).
_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model was loaded from: ``folder`` holds its ``config.json`` and weights (for a Hub
    id, a snapshot folder of the Hub cache); ``hub_id``, ``revision`` (as asked) and ``commit`` (as
    resolved) are set for Hub models only."""

    name: str
    folder: str
    hub_id: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None

    def file(self, filename: str) -> Optional[str]:
        """Path of ``filename`` in the model's folder, or None where there is no such file."""
        path = os.path.join(self.folder, filename)
        return path if os.path.isfile(path) else None


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can only mean a Hub repo id: the form ``org/name`` (or ``name``) and no
    such local path. ``./x``, ``/x``, ``~/x`` and ``a/b/c`` are local paths, never Hub ids."""
    if os.path.exists(name) or name.startswith((".", "~", "/", "\\")) or ".." in name or "--" in name:
        return False
    return bool(_REPO_ID.match(name)) and not name.endswith((".", "-"))


def commit_of(path: str) -> Optional[str]:
    """The commit of a file in huggingface_hub's cache (its snapshot folder's name), else None."""
    match = _SNAPSHOT.search(os.path.abspath(path))
    return match.group(1) if match else None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it (1.x/2.x: ``is_offline_mode``)."""
    import huggingface_hub

    is_offline = getattr(huggingface_hub, "is_offline_mode", None)
    return bool(is_offline()) if is_offline else bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def local_path_problem(name: str, subfolder: str = "", needs_config: bool = True) -> Optional[str]:
    """Why the local path ``name`` is no model folder (None: it is one, or ``name`` is a Hub id).

    Without this, a mistyped path would be tried as a Hub id (retries, then a network error) and a
    folder without weights would get transformers 4's message, which never names model.safetensors."""
    if os.path.isdir(name):
        folder = os.path.join(name, subfolder) if subfolder else name
        if needs_config and not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            return f"folder {folder} has no {CONFIG_NAME}"
        weights = next((n for n in WEIGHTS_CANDIDATES if os.path.isfile(os.path.join(folder, n))), None)
        if weights is None:
            return no_weights_message(folder)
        if weights == SAFE_WEIGHTS_NAME:  # transformers 4 reads its header before our loader runs
            from safetensors import safe_open

            try:
                with safe_open(os.path.join(folder, weights), framework="numpy") as f:
                    f.metadata()
            except Exception as err:
                return f"{os.path.join(folder, weights)}: unreadable safetensors file ({err})"
        return None
    if os.path.exists(name) or is_hub_id(name):
        return None
    return f"{name}: no such model folder (Hub ids look like 'org/name')"


def _download(repo_id: str, filename: str, hub_kwargs: dict, required: bool) -> Optional[str]:
    """``hf_hub_download``; a file the repo (or, offline, the cache) lacks is None unless
    ``required``, and every failure is one line naming the repo, revision and file."""
    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    revision = hub_kwargs.get("revision") or "main"
    where = f"Hub model {repo_id!r} (revision {revision!r})"
    try:
        return huggingface_hub.hf_hub_download(repo_id, filename, **hub_kwargs)
    except RepositoryNotFoundError:
        raise OSError(f"{repo_id}: no such model on the Hub, or a private one (pass token=... / HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise OSError(f"{where}: no such revision (a branch, tag or commit of {repo_id})") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: first
        if not required:
            return None
        if hub_kwargs.get("local_files_only"):
            cache = hub_kwargs.get("cache_dir") or huggingface_hub.constants.HF_HUB_CACHE
            raise OSError(
                f"{where}: {filename} is not in the Hub cache {cache} and downloads are off "
                "(HF_HUB_OFFLINE=1 or local_files_only=True); download it once online, or give a local folder"
            ) from None
        raise OSError(f"{where}: could not download {filename} and the Hub cache has no copy") from None
    except EntryNotFoundError:
        if required:
            raise OSError(f"{where} has no {filename}") from None
        return None


def resolve_model(
    name: Union[str, os.PathLike],
    subfolder: str = "",
    revision: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    token: Optional[Union[str, bool]] = None,
    local_files_only: bool = False,
    force_download: bool = False,
    needs_config: bool = True,
    extra_files: Sequence[str] = (PROCESSOR_NAME,),
) -> ModelSource:
    """The folder holding model ``name`` (a local folder, or a Hub id fetched into the cache).

    For a Hub id, ``config.json`` is fetched first; the commit it came from then pins every other
    file (the weights, their shards, ``extra_files`` where the repo has them), so a push to the
    branch between two downloads cannot mix two commits. ``HF_HUB_OFFLINE=1`` or
    ``local_files_only`` read the cache only. A local path that is no model folder is refused at
    once (no Hub retries)."""
    name = os.fspath(name)
    subfolder = subfolder or ""
    problem = local_path_problem(name, subfolder, needs_config)
    if problem:
        raise OSError(problem)
    if os.path.exists(name):
        folder = os.path.join(name, subfolder) if subfolder else name
        return ModelSource(name, folder)
    hub_kwargs: dict = dict(
        subfolder=subfolder or None,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=bool(local_files_only) or offline(),
        force_download=force_download,
    )
    config = _download(name, CONFIG_NAME, hub_kwargs, required=needs_config)
    commit = commit_of(config) if config else None
    if commit:
        hub_kwargs["revision"] = commit
    weights = None
    for candidate in WEIGHTS_CANDIDATES:
        weights = _download(name, candidate, hub_kwargs, required=False)
        if weights:
            break
    if weights is None:
        where = f"Hub model {name!r} (revision {revision or 'main'!r})"
        raise OSError(f"{where} has no model weights (looked for {', '.join(WEIGHTS_CANDIDATES)})")
    if os.path.basename(weights) == FLAX_WEIGHTS_INDEX_NAME:
        for shard in shard_names_of(weights):
            _download(name, shard, hub_kwargs, required=True)
    for extra in extra_files:
        _download(name, extra, hub_kwargs, required=False)
    folder = os.path.dirname(config or weights)
    return ModelSource(name, folder, hub_id=name, revision=revision, commit=commit or commit_of(weights))


__all__ = ["ModelSource", "commit_of", "is_hub_id", "local_path_problem", "resolve_model"]
