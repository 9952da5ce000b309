"""Hugging Face model ids ("org/name") resolved in the local hub cache, without network access.

The cache layout (huggingface_hub's): <cache>/models--org--name/refs/<revision> holds a commit hash, and
<cache>/models--org--name/snapshots/<hash>/ holds the files. <cache> is $HF_HUB_CACHE, else
$HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (XDG_CACHE_HOME honoured)."""

from __future__ import annotations

import os
import re

from .errors import CheckpointError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def cache_dir() -> str:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def resolve(name: str, revision: str | None = None) -> str:
    """A local directory as given; a Hugging Face id as its cached snapshot directory. Raises
    CheckpointError saying how to download a model that is not in the cache."""
    if os.path.exists(name) or not is_repo_id(name):
        if revision is not None:
            raise ValueError(f"load: revision applies to a Hugging Face model id, and {name!r} is a local path")
        return name
    revision = "main" if revision is None else revision
    if not isinstance(revision, str) or not re.match(r"^[A-Za-z0-9._/-]+$", revision) or ".." in revision:
        raise ValueError(f"load: revision must be a branch, tag or commit hash, got {revision!r}")
    cache = cache_dir()
    repo = os.path.join(cache, "models--" + name.replace("/", "--"))
    download = f"huggingface-cli download {name}" + ("" if revision == "main" else f" --revision {revision}")
    if not os.path.isdir(repo):
        raise CheckpointError(f"{name}: not a local directory, and not in the Hugging Face cache ({cache}); "
                              f"download it with: {download}")
    commit = None
    ref = os.path.join(repo, "refs", revision)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            commit = f.read().strip()
    elif _COMMIT.match(revision):
        commit = revision
    snapshot = os.path.join(repo, "snapshots", commit) if commit else None
    if snapshot is None or not os.path.isdir(snapshot):
        raise CheckpointError(f"{name}: revision {revision!r} is not in the Hugging Face cache ({repo}); "
                              f"download it with: {download}")
    if not os.path.exists(os.path.join(snapshot, "config.json")):
        raise CheckpointError(f"{name}: the cached snapshot {snapshot} has no config.json (an incomplete "
                              f"download?); download it again with: {download}")
    return snapshot
