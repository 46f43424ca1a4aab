"""Shared fixtures: a fresh store and workspace directory per test, hypothesis profiles.

Hypothesis profiles (choose with SNAPD_HYPOTHESIS_PROFILE):
  ci    (default) a fixed, derandomized set of examples, fast enough for every run
  long  many random examples, for a soak run: SNAPD_HYPOTHESIS_PROFILE=long pytest tests -k property
  dev   random examples with the default budget, printing statistics
SNAPD_HYPOTHESIS_EXAMPLES overrides the number of examples of whichever profile is active.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # lets test modules `import treeutil`

from snapd.store.store import Store
from snapd.workspace import Workspace, WorkspaceSettings

_slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "ci",
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_slow_ok,
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_slow_ok
)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=_slow_ok)
_profile = os.environ.get("SNAPD_HYPOTHESIS_PROFILE", "ci")
if os.environ.get("SNAPD_HYPOTHESIS_EXAMPLES"):
    settings.register_profile(
        _profile + "-n",
        settings.get_profile(_profile),
        max_examples=int(os.environ["SNAPD_HYPOTHESIS_EXAMPLES"]),
    )
    _profile += "-n"
settings.load_profile(_profile)


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store.open(str(tmp_path / "store"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ws_dir(tmp_path) -> str:
    path = tmp_path / "ws"
    path.mkdir()
    return str(path)


@pytest.fixture
def open_ws(store) -> Iterator[Callable[..., Workspace]]:
    """open_ws(path, exclude=[...], **settings) -> Workspace, closed after the test."""
    opened: list[Workspace] = []

    def _open(path: str, store_: Store | None = None, **kw) -> Workspace:
        ws = Workspace.open(store_ or store, path, WorkspaceSettings(**kw))
        opened.append(ws)
        return ws

    yield _open
    for ws in opened:
        ws.close()


@pytest.fixture
def ws(open_ws, ws_dir) -> Workspace:
    """A workspace on ws_dir that walks the whole tree at each snapshot (no file watcher) and
    keeps its last 100 snapshots. Tests of the watcher path open their own with watch=True."""
    return open_ws(ws_dir, keep_last=100, watch=False)


# --- a real daemon for end-to-end tests ---------------------------------------------------------
@pytest.fixture(scope="module")
def daemon():
    """A daemon subprocess on a temporary store and socket, shared by one test module; it must
    exit cleanly (status 0) on SIGTERM at the end."""
    from snapd.server.testing import DaemonProcess, short_tempdir

    root = short_tempdir()
    d = DaemonProcess(os.path.join(root, "store"), os.path.join(root, "run", "snapd.sock"))
    d.start()
    try:
        yield d
    finally:
        status = d.terminate()
        d.close()
        shutil.rmtree(root, ignore_errors=True)
    assert status == 0, d.log()


@pytest.fixture(scope="module")
def client(daemon):
    """A sync client connected to the module's daemon."""
    with daemon.client() as c:
        yield c
