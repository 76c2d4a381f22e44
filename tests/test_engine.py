"""Engine selection (compiled ``_core`` or pure ``_core_py``) and the twins' common surface."""

import importlib
import importlib.util
import os
import platform
import subprocess
import sys

import pytest

import mediator


def _compiled_in_subprocess(**env_changes):
    """``mediator.COMPILED`` as seen by a fresh interpreter with the given environment."""
    env = dict(os.environ)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    root = os.path.dirname(os.path.dirname(os.path.abspath(mediator.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    output = subprocess.run(
        [sys.executable, "-c", "import mediator; print(mediator.COMPILED)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert output in ("True", "False"), output
    return output == "True"


def _compiled_module():
    try:
        return importlib.import_module("mediator._core")
    except ImportError:
        return None


def test_compiled_flag_is_a_bool():
    assert isinstance(mediator.COMPILED, bool)


def test_compiled_flag_tells_the_engine_in_use():
    from mediator.common.types import ActionSubject

    expected = "mediator._core" if mediator.COMPILED else "mediator._core_py"
    assert ActionSubject.__module__ == expected


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_no_extensions_variable_forces_the_pure_engine(value):
    assert _compiled_in_subprocess(MEDIATOR_NO_EXTENSIONS=value) is False


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="the extension is CPython-only")
def test_compiled_engine_is_loaded_by_default_when_built():
    spec = importlib.util.find_spec("mediator._core")
    if spec is None or _compiled_module() is None:
        pytest.skip("mediator._core is not built for this interpreter")
    assert _compiled_in_subprocess(MEDIATOR_NO_EXTENSIONS=None) is True
    assert _compiled_in_subprocess(MEDIATOR_NO_EXTENSIONS="0") is True


def _check_surface(module):
    names = list(module.__all__)
    assert names, f"{module.__name__}.__all__ is empty"
    for name in names:
        value = getattr(module, name)
        assert isinstance(value, type) or callable(value), f"{module.__name__}.{name} is not a class or callable"
    return set(names)


def test_pure_engine_exports_its_names():
    from mediator import _core_py

    names = _check_surface(_core_py)
    assert {"ActionSubject", "ActionResult", "RequestDispatcher", "EventDispatcher"} <= names


def test_both_engines_export_the_same_names():
    from mediator import _core_py

    core = _compiled_module()
    if core is None:
        pytest.skip("mediator._core is not importable here")
    assert _check_surface(core) == _check_surface(_core_py)
    for name in core.__all__:
        assert isinstance(getattr(core, name), type) == isinstance(getattr(_core_py, name), type), name
