"""Build: compiles the Cython engine on CPython, or installs the pure one.

The pure engine is installed when MEDIATOR_NO_EXTENSIONS is set, on PyPy and other
interpreters, when Cython is missing, or when the compiler fails. A banner says which.
MEDIATOR_REQUIRE_EXTENSIONS=1 makes a failed build an error instead (the project's own
builds set it: a compile error must not pass unnoticed as a pure install).
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

def flag(name: str) -> bool:
    return os.environ.get(name, "").lower() not in ("", "0", "false", "no")


NO_EXTENSIONS = flag("MEDIATOR_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = flag("MEDIATOR_REQUIRE_EXTENSIONS")
if platform.python_implementation() != "CPython":
    NO_EXTENSIONS = True


def banner(message: str) -> None:
    line = "*" * 75
    print(f"\n{line}\n* mediator: {message}\n{line}\n", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Build the extension if possible; fall back to the pure engine, loudly, if not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler, no headers...
            if REQUIRE_EXTENSIONS:
                raise
            banner(f"the compiled engine could not be built ({error}); installing the pure-Python engine")
        else:
            banner("compiled engine built (mediator._core)")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as error:
            if REQUIRE_EXTENSIONS:
                raise
            banner(f"building {ext.name} failed ({error}); installing the pure-Python engine")


def extensions() -> list:
    if NO_EXTENSIONS:
        banner("MEDIATOR_NO_EXTENSIONS or a non-CPython interpreter: installing the pure-Python engine")
        return []
    try:
        import Cython  # noqa: F401  # setuptools compiles .pyx sources through it
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        banner("Cython is not available: installing the pure-Python engine")
        return []
    return [Extension("mediator._core", ["mediator/_core.pyx"], depends=["mediator/_relay.h", "mediator/_call.h", "mediator/_method.h"])]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
