"""The seven guarantees, on every backend; separate processes (and SIGKILL) on the durable
ones. The memory store lives in one process, so there its crash tests are in-process:
the task doing the work is cancelled at the same point instead of the process killed.

1. optimistic concurrency (tasks: test_es_store.py; processes: here)
2. a reader never skips
3. the store is the outbox
4. atomic batches
5. projections, exactly once in effect
6. snapshots: test_es_snapshots.py
7. schema evolution: test_es_schema.py
"""

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.eventsourcing import Aggregate, Repository, Subscription, applies, open_store

CHILD = str(Path(__file__).resolve().parent / "es_child.py")


@event_type("es_test.child.Deposited")
@dataclass(frozen=True)
class Deposited:
    amount: int


@event_type("es_test.child.Opened")
@dataclass(frozen=True)
class Opened:
    owner: str


class Account(Aggregate):
    @applies
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def run(coro):
    return asyncio.run(coro)


class Child:
    """A child process running es_child.py; read its lines, kill it."""

    def __init__(self, env, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, CHILD, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def expect(self, prefix: str) -> str:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith(prefix):
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"child said {line!r}, expected {prefix!r}; stderr:\n{err}")
        return line.strip()

    def kill(self, may_have_ended: bool = False) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=60)
        ended = may_have_ended and self.process.returncode == 0  # finished before the signal
        assert ended or self.process.returncode == -signal.SIGKILL

    def finish(self) -> str:
        out, err = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, err
        return out


# -- 1. optimistic concurrency across processes ---------------------------------------


def test_concurrent_appends_from_processes_exactly_one_wins(durable_url, child_env, tmp_path):
    run(_append_one(durable_url))
    go = str(tmp_path / "go")
    children = [Child(child_env, "race", durable_url, "acc", "1", go) for _ in range(5)]
    for child in children:
        child.expect("ready")
    Path(go).touch()
    outcomes = sorted(child.finish().split()[0] for child in children)
    assert outcomes == ["lost"] * 4 + ["won"]

    async def check():
        async with open_store(durable_url) as store:
            assert [r.version async for r in store.read("acc")] == [1, 2, 3]

    run(check())


async def _append_one(url: str) -> None:
    async with open_store(url) as store:
        await store.append("acc", [Deposited(0)], expected_version=0)


# -- 2. a reader never skips -----------------------------------------------------------


async def _tail(store, total: int, seen: List) -> None:
    async for record in store.subscribe():
        seen.append((record.position, record.stream, record.version))
        if len(seen) == total:
            return


def _check_tail(seen: List, writers: int, each: int) -> None:
    assert [s[0] for s in seen] == list(range(1, writers * each + 1))  # every position once, in order
    for w in range(writers):
        assert [s[2] for s in seen if s[1] == f"w{w}"] == list(range(1, each + 1))


def test_a_tailing_reader_never_skips_with_8_concurrent_writers(store):
    writers, each = 8, 40

    async def writer(w: int) -> None:
        for i in range(each):
            await store.append(f"w{w}", [Deposited(i)], expected_version=i)
            if i % 3 == 0:
                await asyncio.sleep(0)

    async def main():
        async with store:
            seen: List = []
            tail = asyncio.ensure_future(_tail(store, writers * each, seen))
            await asyncio.gather(*(writer(w) for w in range(writers)))
            await asyncio.wait_for(tail, 60)
            _check_tail(seen, writers, each)

    run(main())


def test_a_tailing_reader_never_skips_with_8_writer_processes(durable_url, child_env):
    writers, each = 8, 25

    async def main():
        async with open_store(durable_url) as store:
            await store.version("w0")  # the schema exists before the writers start
            seen: List = []
            tail = asyncio.ensure_future(_tail(store, writers * each, seen))
            children = [Child(child_env, "write", durable_url, f"w{w}", str(each)) for w in range(writers)]
            loop = asyncio.get_running_loop()
            for child in children:
                assert (await loop.run_in_executor(None, child.finish)).strip() == "done"
            await asyncio.wait_for(tail, 60)
            _check_tail(seen, writers, each)

    run(main())


# -- 3. the store is the outbox --------------------------------------------------------


def _recording_bus(seen: List) -> LocalEventBus:
    bus = LocalEventBus(sync_mode=True)

    async def opened(event: Opened) -> None:
        seen.append(event)

    async def deposited(event: Deposited) -> None:
        seen.append(event)

    bus.register(opened)
    bus.register(deposited)
    return bus


def test_an_uninterrupted_save_publishes_each_event_once(store):
    async def main():
        async with store:
            seen: List = []
            accounts = Repository(store, bus=_recording_bus(seen))
            account = Account(id="a")
            account.record(Opened("Ann"))
            account.record(Deposited(10))
            other = Account(id="b")
            other.record(Opened("Bo"))
            await accounts.save(account, other)
            assert seen == [Opened("Ann"), Deposited(10), Opened("Bo")]
            account.record(Deposited(5))
            await accounts.save(account)
            assert seen[3:] == [Deposited(5)]
            again: List = []
            await Repository(store, bus=_recording_bus(again)).get(Account, "a")  # a next process
            assert again == [] and len(seen) == 4

    run(main())


def test_a_repository_does_not_republish_what_another_one_here_is_publishing(store):
    """Repositories made per request: one's first get must not deliver the events another
    repository of this process is still publishing (each event once when nothing fails)."""

    async def main():
        async with store:
            entered, release = asyncio.Event(), asyncio.Event()
            slow: List = []
            slow_bus = LocalEventBus(sync_mode=True)

            async def wait(event: Opened) -> None:
                slow.append(event)
                entered.set()
                await release.wait()

            slow_bus.register(wait)
            account = Account(id="acc-4")
            account.record(Opened("Ann"))
            saving = asyncio.ensure_future(Repository(store, bus=slow_bus).save(account))
            await entered.wait()  # committed, and being published
            seen: List = []
            other = Repository(store, bus=_recording_bus(seen))
            assert (await other.get(Account, "acc-4")).owner == "Ann"
            assert seen == []
            release.set()
            await saving
            assert slow == [Opened("Ann")]
            late: List = []
            await Repository(store, bus=_recording_bus(late)).get(Account, "acc-4")
            assert late == []  # delivered, and out of the outbox

    run(main())


def test_the_outbox_publishes_after_a_kill_between_commit_and_publish(durable_url, child_env):
    child = Child(child_env, "save_then_hang", durable_url, "acc-1")
    child.expect("publishing")  # committed; the first publish is under way
    child.kill()

    async def main():
        async with open_store(durable_url) as store:
            seen: List = []
            accounts = Repository(store, bus=_recording_bus(seen))
            account = await accounts.get(Account, "acc-1")  # the first get delivers
            assert account.balance == 30
            assert seen == [Opened("Ann"), Deposited(10), Deposited(20)]
            again: List = []
            await Repository(store, bus=_recording_bus(again)).get(Account, "acc-1")
            assert again == []  # delivered: out of the outbox

    run(main())


def test_the_outbox_publishes_after_a_save_cancelled_between_commit_and_publish(store):
    """In-process (every backend, the memory store's only way): the saving task is
    cancelled while its first publish runs; the next repository's first save delivers."""

    async def main():
        async with store:
            publishing = asyncio.Event()
            hung = LocalEventBus(sync_mode=True)

            async def hang(event: Opened) -> None:
                publishing.set()
                await asyncio.sleep(3600)

            hung.register(hang)
            account = Account(id="acc-2")
            account.record(Opened("Ann"))
            account.record(Deposited(10))
            task = asyncio.ensure_future(Repository(store, bus=hung).save(account))
            await publishing.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            seen: List = []
            other = Account(id="acc-3")
            other.record(Opened("Bo"))
            await Repository(store, bus=_recording_bus(seen)).save(other)
            assert seen == [Opened("Ann"), Deposited(10), Opened("Bo")]

    run(main())


# -- 4. atomic batches -----------------------------------------------------------------


def test_a_process_killed_mid_append_leaves_all_or_none(durable_url, child_env):
    import time

    count = 20000

    async def check():
        async with open_store(durable_url) as store:
            version = await store.version("big")
            log = [r.position async for r in store.read_all()]
            assert version % count == 0, version  # whole batches only
            assert log == list(range(1, version + 1))
            return version

    child = Child(child_env, "append_big", durable_url, str(count))
    child.expect("appending")
    started = time.monotonic()
    child.expect("appended")
    took = time.monotonic() - started  # how long one append of `count` events runs here
    child.finish()
    assert run(check()) == count
    for fraction in (0.2, 0.5, 0.8, 0.95):  # kill it at points along its way
        child = Child(child_env, "append_big", durable_url, str(count))
        child.expect("appending")
        time.sleep(took * fraction)
        child.kill(may_have_ended=True)
        run(check())


def test_a_process_killed_mid_save_leaves_all_or_none(durable_url, child_env):
    import time

    count = 300

    async def saved(prefix: str) -> bool:
        async with open_store(durable_url) as store:
            versions = {await store.version(f"{prefix}-{i}") for i in range(count)}
            assert versions in ({0}, {20}), versions  # every aggregate, or none of them
            log = [r.position async for r in store.read_all()]
            assert log == list(range(1, len(log) + 1))  # and no hole in the log
            return versions == {20}

    child = Child(child_env, "save_many", durable_url, str(count), "warm")  # how long a save takes here
    child.expect("saving")
    started = time.monotonic()
    child.expect("saved")
    took = time.monotonic() - started
    child.finish()
    assert run(saved("warm"))
    for n, fraction in enumerate((0.1, 0.4, 0.7, 0.9)):
        child = Child(child_env, "save_many", durable_url, str(count), f"try{n}")
        child.expect("saving")
        time.sleep(took * fraction)
        child.kill(may_have_ended=True)
        run(saved(f"try{n}"))


def test_a_process_killed_mid_transaction_leaves_none_of_it(durable_url, child_env):
    child = Child(child_env, "save_half", durable_url)
    child.expect("half")  # the first aggregate's events are written, uncommitted
    child.kill()

    async def check():
        async with open_store(durable_url) as store:
            assert await store.version("first") == 0 and await store.version("second") == 0
            assert [r async for r in store.read_all()] == []
            assert await store.append("first", [Opened("again")], expected_version=0) == 1  # not locked

    run(check())


def test_a_save_cancelled_mid_transaction_leaves_none_of_it(store):
    """In-process (the memory store's form of the kill): cancelled between two aggregates."""

    async def main():
        async with store:
            half = asyncio.Event()
            first, second = Account(id="first"), Account(id="second")
            first.record(Opened("A"))
            second.record(Opened("B"))

            async def save_half():
                async with store.transaction() as tx:
                    await tx.append(first.id, store._encode(first.pending, None), 0)
                    half.set()
                    await asyncio.sleep(3600)

            task = asyncio.ensure_future(save_half())
            await half.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.version("first") == 0
            await Repository(store).save(first, second)
            assert (await store.version("first"), await store.version("second")) == (1, 1)

    run(main())


# -- 5. projections, exactly once in effect --------------------------------------------


def test_a_projection_killed_mid_batch_applies_each_event_once(durable_url, child_env, tmp_path):
    total = 30

    async def fill():
        async with open_store(durable_url) as store:
            for i in range(1, total + 1):
                await store.append(f"s{i % 4}", [Deposited(i)], expected_version=None)

    run(fill())
    log = tmp_path / "log.txt"
    child = Child(child_env, "project", durable_url, "10", str(log))
    out, err = child.process.communicate(timeout=120)
    assert child.process.returncode == -signal.SIGKILL, err  # died inside the 2nd batch (8..14)

    async def state():
        async with open_store(durable_url) as store:
            async with store.transaction() as tx:
                return (
                    await tx.checkpoint("totals"),
                    await tx.get("totals", "sum", 0),
                    [int(k) for k, _ in await tx.items("totals.applied")],
                )

    checkpoint, partial, applied = run(state())
    assert (checkpoint, partial, sorted(applied)) == (7, sum(range(1, 8)), list(range(1, 8)))
    assert Child(child_env, "project", durable_url, "0", str(log)).finish().split("\n")[1] == f"caught up {total - 7}"
    checkpoint, final, applied = run(state())
    assert checkpoint == total
    assert final == sum(range(1, total + 1))  # each event applied once
    assert sorted(applied) == list(range(1, total + 1))
    delivered = [int(line) for line in log.read_text().split()]
    assert sorted(set(delivered)) == list(range(1, total + 1))  # the plain handler: at least once
    assert delivered.count(8) == 2  # and the interrupted batch twice


def test_a_projection_killed_at_any_point_applies_each_event_once(durable_url, child_env, tmp_path):
    """Kills land anywhere in a catch-up of many small batches, between the commits too:
    the read model's writes and the checkpoint commit together, so none double-counts."""
    import time

    total = 200

    async def fill():
        async with open_store(durable_url) as store:
            await store.append("s", [Deposited(i) for i in range(1, total + 1)], expected_version=0)

    async def state(name: str):
        async with open_store(durable_url) as store:
            async with store.transaction() as tx:
                return await tx.checkpoint(name), await tx.get(name, "sum", 0)

    run(fill())
    log = str(tmp_path / "log.txt")
    warm = Child(child_env, "project", durable_url, "0", log, "warm", "1")  # how long a catch-up takes here
    warm.expect("projecting")
    started = time.monotonic()
    warm.expect("caught up")
    took = time.monotonic() - started
    warm.finish()
    for fraction in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6):
        child = Child(child_env, "project", durable_url, "0", log, "totals", "1")
        child.expect("projecting")
        time.sleep(took * fraction)
        child.kill(may_have_ended=True)
        checkpoint, partial = run(state("totals"))
        assert partial == sum(range(1, checkpoint + 1))  # the read model is at its checkpoint
    Child(child_env, "project", durable_url, "0", log, "totals", "1").finish()
    assert run(state("totals")) == (total, sum(range(1, total + 1)))


def test_a_projection_failing_mid_batch_applies_each_event_once(store):
    """In-process: a handler fails inside a batch; the retry applies each event once."""

    async def main():
        async with store:
            for i in range(1, 21):
                await store.append(f"s{i % 3}", [Deposited(i)], expected_version=None)
            bus = LocalEventBus()
            fail_at = {9}

            async def count(event: Deposited, transaction, recorded) -> None:
                await transaction.put("totals", "sum", await transaction.get("totals", "sum", 0) + event.amount)
                if recorded.position in fail_at:
                    fail_at.clear()
                    raise RuntimeError("projection failed")

            bus.register(count)
            subscription = Subscription(store, bus, name="totals", batch_size=4)
            with pytest.raises(Exception) as info:
                await subscription.catch_up()
            assert "projection failed" in repr(info.value) or any(
                "projection failed" in str(e) for e in getattr(info.value, "exceptions", ())
            )
            assert await store.checkpoint("totals") == 8
            assert await subscription.catch_up() == 12
            async with store.transaction() as tx:
                assert await tx.get("totals", "sum") == sum(range(1, 21))

    run(main())


def test_subscription_run_follows_live_events_and_rebuild_starts_over(store):
    async def main():
        await store.open()
        bus = LocalEventBus()
        seen: List[int] = []

        async def project(event: Deposited, transaction, recorded) -> None:
            seen.append(recorded.position)
            await transaction.put("balances", recorded.stream, await transaction.get("balances", recorded.stream, 0) + event.amount)

        bus.register(project)
        await store.append("a", [Deposited(1), Deposited(2)], expected_version=0)
        subscription = Subscription(store, bus, name="balances")
        runner = asyncio.ensure_future(subscription.run())
        await store.append("b", [Deposited(5)], expected_version=0)
        await store.append("a", [Deposited(3)], expected_version=2)
        for _ in range(500):
            if subscription.position == 4:
                break
            await asyncio.sleep(0.01)
        assert seen == [1, 2, 3, 4]
        async with store.transaction() as tx:
            assert await tx.items("balances") == [("a", 6), ("b", 5)]

        async def clear(tx) -> None:
            for key, _ in await tx.items("balances"):
                await tx.delete("balances", key)

        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert await Subscription(store, bus, name="balances").rebuild(reset=clear) == 4
        assert seen == [1, 2, 3, 4, 1, 2, 3, 4]
        async with store.transaction() as tx:
            assert await tx.items("balances") == [("a", 6), ("b", 5)]
        runner = asyncio.ensure_future(Subscription(store, bus, name="balances").run())
        await asyncio.sleep(0.05)
        await store.close()
        await asyncio.wait_for(runner, 10)  # ends when the store closes
        assert seen == [1, 2, 3, 4, 1, 2, 3, 4]

    run(main())
