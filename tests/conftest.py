"""Shared fixtures: where the offline data sets live, deterministic seeding, and temporary files kept in pytest's
own temporary folder (removed after the run) so that a test run leaves nothing behind."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CLEL_DATA", REPO.parent / "shared" / "data"))


SYSTEM_TMP = Path(tempfile.gettempdir())
_tmp_before: set[str] = set()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Every temporary file of the run, ours and our libraries' (tempfile, subprocesses through TMPDIR, Gradio's
    uploads and gradio_client's downloads), goes under one folder, removed at the end; pytest's own base folder
    goes there too unless the user named one with --basetemp."""
    _tmp_before.update(os.listdir(SYSTEM_TMP))
    root = Path(tempfile.mkdtemp(prefix="clel-tests-"))
    config._clel_tmp_root = root
    if config.option.basetemp is None:
        config.option.basetemp = str(root / "pytest")  # pytest empties and recreates this one itself
    scratch = root / "tmp"
    scratch.mkdir()
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)
    os.environ["GRADIO_TEMP_DIR"] = str(scratch / "gradio")


def pytest_sessionfinish(session, exitstatus):
    root = getattr(session.config, "_clel_tmp_root", None)
    if root is None:
        return
    shutil.rmtree(root, ignore_errors=True)
    new = sorted(n for n in set(os.listdir(SYSTEM_TMP)) - _tmp_before if not n.startswith("clel-tests-"))
    if new:  # something wrote past the redirection above (another pytest run's own folder is not counted)
        print(f"\ntests left {len(new)} entries in {SYSTEM_TMP}: {', '.join(new[:10])}", file=sys.stderr)
        session.exitstatus = 1


def data_path(*parts: str) -> Path:
    """Path under the shared data root; skips the test when it is absent."""
    p = DATA_ROOT.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found at {p} (set CLEL_DATA)")
    return p


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """CLEL_CACHE in the test's own folder: caches written by the test are its own and go with it."""
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes 2 threads several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load_script(relpath: str, name: str):
    """A script of the repository (e.g. ``scripts/train.py``) imported as module ``name``, without editing
    sys.path (scripts are not part of the installed package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
