"""Run a transport worker from the shell.

    python -m mediator.worker MODULE:BUS --url URL --group NAME [--concurrency N]

``MODULE:BUS`` names the event bus whose handlers consume the group's messages (an
attribute path inside an importable module, e.g. ``billing.app:bus``). SIGTERM and SIGINT
stop the worker gracefully (messages in flight finish and are acknowledged, for up to
``--shutdown-timeout`` seconds) and it exits with status 0.
"""

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Any, List, Optional

__all__ = ["main", "load_bus"]


def load_bus(spec: str) -> Any:
    """The object ``MODULE:ATTR[.ATTR...]`` names; ``ValueError`` saying what is wrong."""
    module_name, sep, path = spec.partition(":")
    if not sep or not module_name or not path:
        raise ValueError(f"expected MODULE:BUS (e.g. billing.app:bus), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does for the current directory
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} of {spec!r}: {error}") from error
    for name in path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ValueError(f"{spec!r}: {obj!r} has no attribute {name!r}") from None
    if not callable(getattr(obj, "registered", None)) or not callable(getattr(obj, "publish", None)):
        raise ValueError(f"{spec!r} is {obj!r}, not an event bus (a LocalEventBus)")
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mediator.worker",
        description="Consume a transport's messages for one group through an event bus's handlers.",
    )
    parser.add_argument("bus", metavar="MODULE:BUS", help="the event bus, e.g. billing.app:bus")
    parser.add_argument("--url", required=True, help="the broker: redis://..., nats://..., memory://...")
    parser.add_argument("--group", required=True, help="the consumer group (workers of one group share the work)")
    parser.add_argument("--concurrency", type=int, default=64, help="messages in flight at most (default 64)")
    parser.add_argument("--max-deliveries", type=int, default=5, help="deliveries before dead-lettering (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry, doubling (default 1)")
    parser.add_argument("--claim-idle", type=float, default=30.0, help="seconds before a dead worker's messages are reclaimed")
    parser.add_argument("--start", choices=("latest", "earliest"), default="latest", help="where a new group starts")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds in-flight messages get at shutdown")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--opentelemetry",
        action="store_true",
        help="trace and measure the worker and its bus (mediator.opentelemetry) with the global "
        "OpenTelemetry providers, which MODULE sets up",
    )
    return parser


async def _serve(bus: Any, args: argparse.Namespace) -> None:
    from mediator.transport import Worker, connect

    async with connect(args.url) as transport:
        worker = Worker(
            transport,
            bus,
            group=args.group,
            concurrency=args.concurrency,
            max_deliveries=args.max_deliveries,
            backoff=args.backoff,
            claim_idle=args.claim_idle,
            start=args.start,
            shutdown_timeout=args.shutdown_timeout,
        )
        if args.opentelemetry:
            from mediator.opentelemetry import instrument

            instrument(worker)
        async with worker:
            logging.getLogger("mediator.transport").info(
                "worker %s consuming group %r from %s", worker.consumer, args.group, args.url
            )
            await worker.run()


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bus = load_bus(args.bus)
    except ValueError as error:
        parser.error(str(error))
    try:
        asyncio.run(_serve(bus, args))
    except KeyboardInterrupt:  # a SIGINT before the worker's own handler was installed
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
