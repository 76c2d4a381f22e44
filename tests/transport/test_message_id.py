"""``new_message_id``: unique, 32 hex digits, and never the same in a forked child."""

import os
import re

import pytest

from mediator.transport import new_message_id


def test_message_ids_are_32_hex_digits_and_distinct() -> None:
    ids = [new_message_id() for _ in range(2000)]  # several refills of the id pool
    assert all(re.fullmatch(r"[0-9a-f]{32}", message_id) for message_id in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_message_ids() -> None:
    new_message_id()  # the parent holds unused ids when it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids to the parent, then exit at once
        try:
            os.write(write, ",".join(new_message_id() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    parent = {new_message_id() for _ in range(20)}
    assert len(child) == 20
    assert not child & parent, "a forked child published under its parent's message ids"
