"""Fixtures of the event-store contract tests: every test runs against every backend.

``BACKENDS`` names the stores each contract test runs on and ``URL_MAKERS`` says how a
test gets a store URL of its own (a fresh, empty store for every test). A backend adds
itself by appending its name to ``BACKENDS`` (and to ``DURABLE`` if its data outlives a
process) and a maker ``(request, tmp_path) -> url`` to ``URL_MAKERS``; nothing else here
changes. A maker may use ``request.getfixturevalue`` for session-wide setup (e.g. one
PostgreSQL database per test run, created here and dropped at the end).

Fixtures:
- ``store_url``: a fresh store's URL, once per backend in ``BACKENDS``;
- ``durable_url``: the same over ``DURABLE`` only (tests that reopen the store or run
  other processes on it: the memory store lives and dies with its process);
- ``store``: ``open_store(store_url)``, not yet connected: a test opens it inside its own
  event loop (``async with store:``), which also closes it.

Tests are plain functions running ``asyncio.run(main())`` (the suite has no asyncio
plugin).
"""

import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

BACKENDS: List[str] = ["memory", "sqlite"]
"""The backends every contract test runs on."""

DURABLE: List[str] = ["sqlite"]
"""The backends whose data outlives the process (reopen and multi-process tests)."""

URL_MAKERS: Dict[str, Callable[[Any, Path], str]] = {
    "memory": lambda request, tmp_path: "memory://",
    "sqlite": lambda request, tmp_path: f"sqlite:///{tmp_path / 'events.db'}",
}
"""Backend name -> ``(request, tmp_path) -> url`` of a fresh, empty store."""

# The PostgreSQL backend registers itself here (helper module of its own, if present).
try:  # pragma: no cover - depends on the branch
    from pg_backend import register as _register_postgres  # type: ignore[import-not-found]
except ImportError:
    pass
else:
    _register_postgres(BACKENDS, DURABLE, URL_MAKERS)


@pytest.fixture(params=BACKENDS)
def store_url(request: Any, tmp_path: Path) -> str:
    """A fresh store's URL, for each backend."""
    return URL_MAKERS[request.param](request, tmp_path)


@pytest.fixture(params=DURABLE)
def durable_url(request: Any, tmp_path: Path) -> str:
    """A fresh store's URL, for each backend whose data outlives a process."""
    return URL_MAKERS[request.param](request, tmp_path)


@pytest.fixture
def store(store_url: str) -> Any:
    """An unopened store (open it inside the test's loop: ``async with store:``)."""
    from mediator.eventsourcing import open_store

    store = open_store(store_url)
    yield store
    assert store.closed or not store._opened, f"{store!r} was left open by the test"


HERE = Path(__file__).resolve().parent


@pytest.fixture
def child_env() -> Dict[str, str]:
    """The environment of a child process: the same engine, the same ``mediator`` as the
    tests import (this checkout, or an installed wheel)."""
    import mediator

    env = dict(os.environ)
    root = str(Path(mediator.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.fixture
def python() -> str:
    """The interpreter running the tests (children run on the same one)."""
    return sys.executable


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    """The PostgreSQL tests are deselected where the backend cannot run (PyPy)."""
    try:
        from pg_backend import deselect_unavailable  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - depends on the branch
        return
    deselect_unavailable(config, items)
