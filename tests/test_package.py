"""Package-level behaviour: light import, lazy subpackages, version, settings, CLI entry point."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

import stpredict as stp
from stpredict._settings import Settings

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "squidpy", "spatialdata", "scanpy")
# Subpackages that must not load torch/timm/squidpy/spatialdata at import time (docs/design.md).
LIGHT_SUBMODULES = ("pp", "tl", "pl", "io", "datasets", "metrics", "cli")


def _exists(module: str) -> bool:
    """Whether ``module`` has been written (an empty folder is only a namespace package)."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin not in (None, "namespace")


def _run_python(code: str, *, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as its last line."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- import weight ---------------------------------------------------------------------------


def test_import_is_light():
    res = _run_python(
        f"""
        import json, sys
        import stpredict
        heavy = {HEAVY!r}
        loaded = sorted(m for m in heavy if m in sys.modules)
        subs = sorted(m for m in sys.modules if m.startswith("stpredict."))
        print(json.dumps({{"loaded": loaded, "subs": subs}}))
        """
    )
    assert res["loaded"] == [], f"`import stpredict` imported {res['loaded']}"
    # only the settings and logging modules are loaded eagerly
    assert set(res["subs"]) <= {"stpredict._settings", "stpredict._logging"}, res["subs"]


@pytest.mark.parametrize("name", LIGHT_SUBMODULES)
def test_light_subpackage_import(name):
    if not _exists(f"stpredict.{name}"):
        pytest.skip(f"stpredict.{name} is not written yet")
    res = _run_python(
        f"""
        import json, sys
        import stpredict.{name}
        print(json.dumps(sorted(m for m in ("torch", "timm", "squidpy", "spatialdata") if m in sys.modules)))
        """
    )
    assert res == [], f"`import stpredict.{name}` imported {res} at module level"


# -- version and lazy subpackages -------------------------------------------------------------


def test_version():
    assert isinstance(stp.__version__, str)
    assert stp.__version__ == version("stpredict-he")  # the PyPI distribution name
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+-].*)?", stp.__version__), stp.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, flags=re.M).group(1)
    assert stp.__version__ == declared


@pytest.mark.parametrize("name", stp._SUBMODULES)
def test_subpackage_lazy(name):
    if not _exists(f"stpredict.{name}"):
        pytest.skip(f"stpredict.{name} is not written yet")
    assert name in dir(stp)
    res = _run_python(
        f"""
        import json, sys
        import stpredict as stp
        before = "stpredict.{name}" in sys.modules
        mod = getattr(stp, "{name}")
        after = "stpredict.{name}" in sys.modules
        print(json.dumps({{"before": before, "after": after, "modname": mod.__name__,
                          "same": mod is sys.modules["stpredict.{name}"]}}))
        """
    )
    assert res == {"before": False, "after": True, "modname": f"stpredict.{name}", "same": True}


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        _ = stp.not_a_module


# -- settings -----------------------------------------------------------------------------------


@pytest.fixture
def fresh_settings():
    """A new Settings object; restore the package logger level afterwards."""
    logger = logging.getLogger("stpredict")
    level = logger.level
    yield Settings()
    logger.setLevel(level)


def test_settings_defaults(fresh_settings):
    s = fresh_settings
    assert s.device == "auto"
    assert s.verbosity == 2
    assert isinstance(s.seed, int)
    assert isinstance(s.num_workers, int)
    assert s.num_workers >= 0
    assert "verbosity=2" in repr(s)


def test_settings_datasetdir_env(fresh_settings, monkeypatch, tmp_path):
    s = fresh_settings
    monkeypatch.setenv("STPREDICT_DATA_DIR", str(tmp_path / "env-cache"))
    assert s.datasetdir == tmp_path / "env-cache"
    # an explicit value wins over the environment, None goes back to it
    s.datasetdir = tmp_path / "explicit"
    assert s.datasetdir == tmp_path / "explicit"
    s.datasetdir = str(tmp_path / "as-string")
    assert s.datasetdir == tmp_path / "as-string"
    s.datasetdir = None
    assert s.datasetdir == tmp_path / "env-cache"
    # without the variable: the platform cache folder, named after the package
    monkeypatch.delenv("STPREDICT_DATA_DIR")
    assert "stpredict" in str(s.datasetdir)
    assert s.datasetdir != tmp_path / "env-cache"


def test_settings_datasets_url_env(fresh_settings, monkeypatch):
    s = fresh_settings
    monkeypatch.delenv("STPREDICT_DATASETS_URL", raising=False)
    assert s.datasets_url is None
    monkeypatch.setenv("STPREDICT_DATASETS_URL", "http://127.0.0.1:9/mirror")
    assert s.datasets_url == "http://127.0.0.1:9/mirror"
    monkeypatch.setenv("STPREDICT_DATASETS_URL", "")
    assert s.datasets_url is None
    s.datasets_url = "http://example.invalid/data"
    assert s.datasets_url == "http://example.invalid/data"


def test_settings_env_read_in_fresh_process(tmp_path):
    res = _run_python(
        """
        import json
        import stpredict as stp
        print(json.dumps({"dir": str(stp.settings.datasetdir), "url": stp.settings.datasets_url}))
        """,
        env={"STPREDICT_DATA_DIR": str(tmp_path / "c"), "STPREDICT_DATASETS_URL": "http://mirror.invalid/x"},
    )
    assert res == {"dir": str(tmp_path / "c"), "url": "http://mirror.invalid/x"}


@pytest.mark.parametrize(
    ("value", "level"), [(0, logging.ERROR), (1, logging.WARNING), (2, logging.INFO), (3, logging.DEBUG)]
)
def test_settings_verbosity(fresh_settings, value, level):
    fresh_settings.verbosity = value
    assert fresh_settings.verbosity == value
    assert logging.getLogger("stpredict").level == level


@pytest.mark.parametrize("bad", [-1, 4, "info", None, 2.5])
def test_settings_verbosity_invalid(fresh_settings, bad):
    fresh_settings.verbosity = 1
    with pytest.raises(ValueError, match="settings.verbosity"):
        fresh_settings.verbosity = bad
    # a rejected value changes nothing
    assert fresh_settings.verbosity == 1
    assert logging.getLogger("stpredict").level == logging.WARNING


def test_global_settings_object():
    assert isinstance(stp.settings, Settings)
    assert "settings" in dir(stp)


# -- command line -------------------------------------------------------------------------------


def _need_cli():
    if not _exists("stpredict.cli"):
        pytest.skip("stpredict.cli is not written yet")


def test_cli_help_module():
    _need_cli()
    if not _exists("stpredict.__main__"):
        pytest.skip("stpredict/__main__.py is not written yet")
    cmd = [sys.executable, "-m", "stpredict", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout.lower()
    assert "demo" in proc.stdout


def test_cli_help_console_script():
    _need_cli()
    script = Path(sys.executable).parent / "stpredict"
    exe = str(script) if script.exists() else shutil.which("stpredict")
    if exe is None:
        pytest.skip("the `stpredict` console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert stp.__version__ in proc.stdout + proc.stderr


# -- repository consistency --------------------------------------------------------------------


def test_ci_script_runs_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = REPO / ".ci" / "run"
    if not ci.exists():
        pytest.skip("not a source checkout")
    test_cmd = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test]" && python -m pytest'
    assert test_cmd in readme
    assert test_cmd in ci.read_text()
    assert os.access(ci, os.X_OK)
    assert "stpredict demo --preset cpu" in readme
