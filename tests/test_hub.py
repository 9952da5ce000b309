"""Hugging Face model ids resolved in the local hub cache (no network): the layout huggingface_hub writes,
checked against huggingface_hub's own cache lookup."""

import os
import shutil

import numpy as np
import pytest

import tridecode
from tridecode.errors import CheckpointError
from tridecode.hub import resolve

from golden import GOLDEN_DIR

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def _cache(root, repo_id="acme/tiny-tri", commits=(COMMIT,), refs=(("main", COMMIT),)):
    """A hub cache as huggingface_hub lays it out: blobs by hash, snapshots of symlinks, refs."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    for commit in commits:
        snap = repo / "snapshots" / commit
        for dirpath, _, files in os.walk(GOLDEN_DIR):
            rel = os.path.relpath(dirpath, GOLDEN_DIR)
            (snap / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                blob = repo / "blobs" / f"{commit[:8]}-{rel.replace(os.sep, '_')}-{name}"
                shutil.copyfile(os.path.join(dirpath, name), blob)
                os.symlink(os.path.relpath(blob, snap / rel), snap / rel / name)
    (repo / "refs").mkdir()
    for ref, commit in refs:
        (repo / "refs" / ref).write_text(commit)
    return repo


def test_a_cached_model_id_loads_like_its_directory(tmp_path, monkeypatch):
    repo = _cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cached = huggingface_hub.try_to_load_from_cache("acme/tiny-tri", "config.json", cache_dir=str(tmp_path / "hub"))
    assert os.path.dirname(cached) == resolve("acme/tiny-tri") == str(repo / "snapshots" / COMMIT)
    m = tridecode.load("acme/tiny-tri")
    ref = tridecode.load(GOLDEN_DIR)
    np.testing.assert_array_equal(m.forward([1, 5, 9]), ref.forward([1, 5, 9]))
    assert m.lora is not None      # the drafter in the snapshot is found like in a directory


def test_hf_home_and_revisions(tmp_path, monkeypatch):
    repo = _cache(tmp_path / "home" / "hub", commits=(COMMIT, OTHER), refs=(("main", COMMIT), ("v2", OTHER)))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve("acme/tiny-tri") == str(repo / "snapshots" / COMMIT)
    assert resolve("acme/tiny-tri", "v2") == str(repo / "snapshots" / OTHER)
    assert resolve("acme/tiny-tri", OTHER) == str(repo / "snapshots" / OTHER)
    assert tridecode.load("acme/tiny-tri", revision="v2").directory == str(repo / "snapshots" / OTHER)
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    _cache(tmp_path / "user" / ".cache" / "huggingface" / "hub", repo_id="acme/other")
    assert resolve("acme/other").startswith(str(tmp_path / "user" / ".cache" / "huggingface" / "hub"))


def test_missing_models_say_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"acme/absent: not a local directory, and not in the Hugging Face "
                                              r"cache .*download it with: huggingface-cli download acme/absent"):
        tridecode.load("acme/absent")
    _cache(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"revision 'v9' is not in the Hugging Face cache.*huggingface-cli "
                                              r"download acme/tiny-tri --revision v9"):
        tridecode.load("acme/tiny-tri", revision="v9")
    for bad in ("../../etc", "", 0, ["main"]):
        with pytest.raises(ValueError, match="revision must be a branch"):
            tridecode.load("acme/tiny-tri", revision=bad)


def test_local_paths_win_and_other_names_stay_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    _cache(tmp_path / "hub")
    local = tmp_path / "acme" / "tiny-tri"
    shutil.copytree(GOLDEN_DIR, local)
    monkeypatch.chdir(tmp_path)
    assert resolve("acme/tiny-tri") == "acme/tiny-tri"          # the directory here, not the cache
    with pytest.raises(CheckpointError, match="not a directory"):
        tridecode.load("./no/such/dir/at/all")
    with pytest.raises(ValueError, match="revision applies to a Hugging Face model id"):
        tridecode.load(GOLDEN_DIR, revision="main")
