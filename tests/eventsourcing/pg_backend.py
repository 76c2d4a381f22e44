"""The PostgreSQL backend in the contract tests (imported by ``conftest.py``).

One database per test run, ``mediator_test_<uuid>``, created on first use and dropped
(``WITH (FORCE)``) when the run ends; each test gets a fresh, empty store in a schema of
its own in it (``?search_path=t_<uuid>``), so tests never see each other's events.

The server is ``MEDIATOR_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
the one ``.ci/run`` starts). A server that does not answer makes the PostgreSQL tests
FAIL, never skip. On interpreters other than CPython the PostgreSQL parameters are
deselected (not skipped): asyncpg does not build on PyPy, and psycopg's ctypes libpq
fails there, so the backend is CPython-only.
"""

import asyncio
import os
import platform
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ADMIN_URL = os.environ.get("MEDIATOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
AVAILABLE = platform.python_implementation() == "CPython"
REASON = (
    f"PostgreSQL backend is CPython-only (asyncpg does not build on {platform.python_implementation()}): "
    "its contract tests are deselected here"
)

_database: Optional[str] = None


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.partition("?")
    scheme, sep, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}{sep}{authority}/{database}"


def _run(sql: str, url: str = ADMIN_URL) -> None:
    import asyncpg

    async def main() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(main())


def _test_database(config: Any) -> str:
    """The run's database, created on first use; dropped when the run ends."""
    global _database
    if _database is None:
        name = "mediator_test_" + uuid.uuid4().hex[:12]
        _run(f"CREATE DATABASE {name}")
        _database = name

        def drop() -> None:
            global _database
            _database = None
            _run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        config.add_cleanup(drop)
    return _database


def postgres_url(request: Any, tmp_path: Path) -> str:
    """A fresh, empty PostgreSQL store: a new schema in the run's database."""
    database = _test_database(request.config)
    schema = "t_" + uuid.uuid4().hex[:12]
    url = _with_database(ADMIN_URL, database)
    _run(f"CREATE SCHEMA {schema}", url)
    return f"{url}?search_path={schema}"


def register(backends: List[str], durable: List[str], url_makers: Dict[str, Callable[[Any, Path], str]]) -> None:
    """Add ``postgres`` to the backends every contract test runs on."""
    backends.append("postgres")
    durable.append("postgres")
    url_makers["postgres"] = postgres_url


def deselect_unavailable(config: Any, items: List[Any]) -> None:
    """Deselect the ``[postgres]`` tests (and ``test_postgres.py``) where the backend cannot run (not CPython)."""
    if AVAILABLE:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        postgres_only = Path(str(item.fspath)).name == "test_postgres.py"
        (drop if postgres_only or "postgres" in params else keep).append(item)
    if drop:
        items[:] = keep
        config.hook.pytest_deselected(items=drop)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"{REASON} ({len(drop)} tests)")
