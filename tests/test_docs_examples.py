"""Every Python example in README.md and docs/ runs, so none rots.

Each fenced ``python`` block is executed. Markers (HTML comments, invisible when rendered)
on the lines just before a fence say how:

- ``<!-- continue -->``: run in the namespace of the file's previous block (a story told
  in several blocks).
- ``<!-- setup ... -->``: code run first, in the block's namespace (names the example uses
  but does not show, such as the classes a fragment refers to).
- ``<!-- fragment: why -->``: not runnable on its own (a signature, a shape); counted, and
  it must say why.

Top-level ``await`` works, as in an asyncio REPL. Once a chain of blocks has run, its ``main()`` coroutine, if it defines one and does not run it itself,
is run. Examples that use a database or a broker run against the local real
servers; ``$RUN`` in a URL or name is replaced by a name unique to this test run.
"""

import ast
import asyncio
import contextlib
import inspect
import io
import os
import pathlib
import re
import sys
import uuid
from typing import Dict, List, NamedTuple, Optional

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
RUN = f"docs_{uuid.uuid4().hex[:8]}"

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*(continue|setup|fragment)\b:?(.*?)(-->)?\s*$", re.S)


class Block(NamedTuple):
    path: pathlib.Path
    line: int
    code: str
    setup: str
    continues: bool
    fragment: Optional[str]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: pathlib.Path) -> List[Block]:
    lines = path.read_text().splitlines()
    blocks: List[Block] = []
    pending: Dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        mark = _MARK.match(line)
        if mark:
            kind, rest, closed = mark.group(1), mark.group(2), mark.group(3)
            body = [rest]
            while not closed:  # a marker running over several lines (setup code)
                i += 1
                if lines[i].rstrip().endswith("-->"):
                    body.append(lines[i].rstrip()[:-3])
                    closed = "-->"
                else:
                    body.append(lines[i])
            text = "\n".join(body).strip("\n")
            pending[kind] = text if kind == "setup" else text.strip()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            language, start = fence.group(1), i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            if language == "python":
                fragment = pending.get("fragment")
                blocks.append(
                    Block(
                        path,
                        start,
                        "\n".join(lines[start:i]),
                        pending.get("setup", ""),
                        "continue" in pending,
                        fragment,
                    )
                )
            pending = {}
        elif line.strip():
            pending = {}
        i += 1
    return blocks


def _chains() -> List[List[Block]]:
    chains: List[List[Block]] = []
    for path in FILES:
        for block in _blocks(path):
            if block.fragment is not None:
                continue
            if block.continues:
                assert chains and chains[-1][-1].path == path, f"{block.name}: 'continue' with nothing before it"
                chains[-1].append(block)
            else:
                chains.append([block])
    return chains


def _fragments() -> List[Block]:
    return [block for path in FILES for block in _blocks(path) if block.fragment is not None]


def _substitute(code: str) -> str:
    return code.replace("$RUN", RUN)


@pytest.mark.parametrize("chain", _chains(), ids=lambda chain: chain[0].name)
def test_example_runs(chain: List[Block], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files an example writes (sqlite:///bank.db) land here
    namespace: dict = {"__name__": f"docs_example_{chain[0].line}"}
    module = type(sys)(namespace["__name__"])
    module.__dict__.update(namespace)
    sys.modules[module.__name__] = module  # dataclasses and typing resolve names through it
    loop = asyncio.new_event_loop()  # one loop for the chain: top-level awaits, then main()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for block in chain:
                for part, what in ((block.setup, "setup of"), (block.code, "")):
                    if part.strip():
                        code = compile(
                            _substitute(part), f"{what} {block.name}".strip(), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
                        )
                        result = eval(code, module.__dict__)
                        if inspect.iscoroutine(result):
                            loop.run_until_complete(result)
            main = module.__dict__.get("main")
            runs_itself = any("asyncio.run(" in block.code for block in chain)
            if main is not None and asyncio.iscoroutinefunction(main) and not runs_itself:
                loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        del sys.modules[module.__name__]


def test_every_python_block_is_run_or_says_why_not() -> None:
    fragments = _fragments()
    for block in fragments:
        assert block.fragment, f"{block.name}: a fragment marker must say why the block cannot run"
    run = sum(len(chain) for chain in _chains())
    assert run > 0
    assert run >= 2 * len(fragments), f"{run} blocks run, {len(fragments)} fragments: too few examples run"
