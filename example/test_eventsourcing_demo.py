"""Keeps example/eventsourcing_demo.py honest: run it on a new SQLite file, check what it prints."""

import runpy
import sys
from pathlib import Path

DEMO = Path(__file__).with_name("eventsourcing_demo.py")

EXPECTED = """\
> save Ann and Bob (one transaction)
  bus: deposited 10
  bus: deposited 25
  bus: deposited 5
> two clerks load Ann's account and both withdraw 30
< the second save is refused: stream 'ann' is at version 4, not at the expected version 3
< after reloading: Ann has 5, cannot withdraw 30
Ann's balance after her first deposit: 10
> the balances projection catches up
  6 events -> {'ann': {'owner': 'Ann', 'balance': 5}, 'bob': {'owner': 'Bob', 'balance': 5}}
log: [(1, 'ann', 'bank.Opened'), (2, 'ann', 'bank.Deposited'), (3, 'ann', 'bank.Deposited'), \
(4, 'bob', 'bank.Opened'), (5, 'bob', 'bank.Deposited'), (6, 'ann', 'bank.Withdrawn')]
reopened: Ann has 5 at version 4
"""


def test_eventsourcing_demo_output(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(DEMO)])
    runpy.run_path(str(DEMO), run_name="__main__")
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first.startswith("store: sqlite:////") and first.endswith("/bank.db")
    assert rest == EXPECTED
