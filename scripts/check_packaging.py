"""Packaging checks that need no Docker: the sdist, the pure wheel, the wheel matrix.

- the sdist carries ``_core.pyx`` and the headers it includes (and the stub, ``py.typed``), never generated C;
- ``MEDIATOR_NO_EXTENSIONS=1`` builds a pure ``py3-none-any`` wheel (the PyPy wheel);
- ``cibuildwheel --print-build-identifiers`` lists CPython 3.9-3.14 for Linux
  (manylinux and musllinux), macOS and Windows.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ["cp39", "cp310", "cp311", "cp312", "cp313", "cp314"]


def run(*args: str, **env: str) -> str:
    result = subprocess.run(
        args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )
    if result.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"packaging check failed: {message}")
    print(f"ok: {message}")


def check_sdist(out: Path) -> None:
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out))
    (sdist,) = out.glob("*.tar.gz")
    names = tarfile.open(sdist).getnames()
    check(any(n.endswith("mediator/_core.pyx") for n in names), "sdist carries mediator/_core.pyx")
    check(any(n.endswith("mediator/_relay.h") for n in names), "sdist carries mediator/_relay.h (the C relay the engine includes)")
    check(any(n.endswith("mediator/_call.h") for n in names), "sdist carries mediator/_call.h (the C callable the engine includes)")
    check(any(n.endswith("mediator/_method.h") for n in names), "sdist carries mediator/_method.h (the C method the engine includes)")
    check(any(n.endswith("mediator/_core.pyi") for n in names), "sdist carries the _core.pyi stub")
    check(any(n.endswith("mediator/py.typed") for n in names), "sdist carries py.typed")
    check(not any(n.endswith((".c", ".so")) for n in names), "sdist carries no generated C or binaries")


def check_pure_wheel(out: Path) -> None:
    log = run(
        sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), MEDIATOR_NO_EXTENSIONS="1"
    )
    check("installing the pure-Python engine" in log, "the build banner names the pure engine")
    (wheel,) = out.glob("*.whl")
    check(wheel.name.endswith("-py3-none-any.whl"), f"pure wheel is py3-none-any ({wheel.name})")
    names = zipfile.ZipFile(wheel).namelist()
    check("mediator/_core_py.py" in names and not any(n.endswith((".so", ".pyd")) for n in names),
          "pure wheel holds the pure engine and no binary")
    check(all(f"mediator/eventsourcing/{m}.py" in names for m in ("store", "sqlite", "memory", "aggregate")),
          "pure wheel holds mediator.eventsourcing (the store, its SQLite and memory backends)")
    (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode().split("\n\n", 1)[0].splitlines()
    check("License-Expression: MIT" in headers, "wheel metadata has the SPDX license expression MIT")
    check(any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "wheel carries the LICENSE file")


def check_wheel_matrix() -> None:
    identifiers = {}
    for platform in ("linux", "macos", "windows"):
        identifiers[platform] = run(
            sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform
        ).split()
    for version in VERSIONS:
        for flavour in ("manylinux_x86_64", "musllinux_x86_64", "manylinux_aarch64"):
            check(f"{version}-{flavour}" in identifiers["linux"], f"wheel {version}-{flavour}")
        check(f"{version}-macosx_arm64" in identifiers["macos"], f"wheel {version}-macosx_arm64")
        check(f"{version}-win_amd64" in identifiers["windows"], f"wheel {version}-win_amd64")
    check(not any(i.startswith("pp") for ids in identifiers.values() for i in ids),
          "no PyPy binary wheels (PyPy takes the pure wheel)")


def main() -> None:
    with tempfile.TemporaryDirectory() as sdist_dir, tempfile.TemporaryDirectory() as wheel_dir:
        check_sdist(Path(sdist_dir))
        check_pure_wheel(Path(wheel_dir))
    check_wheel_matrix()


if __name__ == "__main__":
    main()
