"""Engine selection for the whole suite (tests/ and example/).

``--engine=compiled`` fails the run unless the compiled engine is the one loaded;
``--engine=pure`` forces the pure-Python twin (MEDIATOR_NO_EXTENSIONS=1); ``auto``
takes whatever ``import mediator`` picks. The choice must be made before ``mediator``
is imported, so nothing here imports it at module level.
"""

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=("auto", "compiled", "pure"),
        default="auto",
        help="dispatch engine to test: compiled (must be loaded), pure, or auto",
    )


def pytest_configure(config: pytest.Config) -> None:
    engine = config.getoption("--engine")
    if engine == "pure":
        os.environ["MEDIATOR_NO_EXTENSIONS"] = "1"
    elif engine == "compiled":
        os.environ.pop("MEDIATOR_NO_EXTENSIONS", None)
    import mediator

    if engine == "compiled" and not mediator.COMPILED:
        raise pytest.UsageError(
            "--engine=compiled, but the compiled engine is not loaded (build it: pip install -e .)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    import platform

    import mediator

    kind = "compiled (mediator._core)" if mediator.COMPILED else "pure Python (mediator._core_py)"
    return f"mediator engine: {kind} on {platform.python_implementation()} {platform.python_version()}"


class _UnretrievedTaskErrors:
    """Collects asyncio's 'exception was never retrieved' reports (a lost error)."""

    def __init__(self) -> None:
        import logging

        self.records: list = []
        self.handler = logging.Handler()
        self.handler.emit = self._emit  # type: ignore[method-assign]

    def _emit(self, record: "object") -> None:
        message = record.getMessage()  # type: ignore[attr-defined]
        if "never retrieved" in message:
            self.records.append(message)


@pytest.fixture(autouse=True)
def no_lost_task_errors():
    """Fail any test after which asyncio reports a task exception nobody retrieved."""
    import gc
    import logging

    collector = _UnretrievedTaskErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collector.handler)
    try:
        yield
        gc.collect()  # unretrieved errors are reported when their task is collected
    finally:
        logger.removeHandler(collector.handler)
    if collector.records:
        pytest.fail("asyncio reported lost task exceptions:\n" + "\n".join(collector.records))
