"""Keeps example/demo.py honest: run it and check what it prints."""

import runpy
from pathlib import Path

import mediator

DEMO = Path(__file__).with_name("demo.py")

EXPECTED = """\
> PlaceOrder(item='rubber duck', quantity=2) from Ann
  order #1 placed
  stock of rubber duck: 3 -> 1
  email to ann@example.com: order #1 (2 x rubber duck) confirmed
< order #1 done
> PlaceOrder(item='teapot', quantity=1) from Ann
  order #2 placed
  stock of teapot: 1 -> 0
  email to ann@example.com: order #2 (1 x teapot) confirmed
< order #2 done
> PlaceOrder(item='rubber duck', quantity=2) from Ann
< refused: only 1 rubber duck(s) left
stock left: {'rubber duck': 1, 'teapot': 0}
"""


def test_demo_output(capsys):
    runpy.run_path(str(DEMO), run_name="__main__")
    engine = "compiled" if mediator.COMPILED else "pure Python"
    assert capsys.readouterr().out == EXPECTED + f"engine: {engine} (mediator.COMPILED = {mediator.COMPILED})\n"
