"""Every ```python block of the README and the docs runs, in order, one interpreter per file.

Training is cut to one epoch (``STPREDICT_MAX_EPOCHS=1``); the published datasets come from a
loopback mirror of ``../shared/data`` (files whose snippets download are skipped without it).
Blocks fenced ``py`` instead of ``python`` need files of the reader's own (a whole-slide image)
and are not run; ``tests/test_wsi.py`` runs the same calls on a slide it writes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _http import _Server

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_DOWNLOADS = re.compile(r"stp\.datasets\.(her2st|mouse_olfactory_bulb)\(")


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a markdown file, dedented."""
    return [textwrap.dedent(block) for block in _FENCE.findall(path.read_text())]


def test_fences_found():
    assert len(python_blocks(REPO / "README.md")) >= 3
    assert any("stp.tl.fit" in b for b in python_blocks(REPO / "docs" / "getting-started.md"))


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_snippets_run(path, tmp_path, request):
    blocks = python_blocks(path)
    env = {**os.environ, "STPREDICT_MAX_EPOCHS": "1", "MPLBACKEND": "Agg"}
    env["STPREDICT_DATA_DIR"] = str(tmp_path / "cache")
    server = None
    if any(_DOWNLOADS.search(b) for b in blocks):
        shared = request.getfixturevalue("shared_data")  # skips when ../shared/data is absent
        server = _Server(shared)
        env["STPREDICT_DATASETS_URL"] = server.url
    script = tmp_path / "snippets.py"
    script.write_text("\n\n".join(f"# ---- block {i}\n{b}" for i, b in enumerate(blocks)))
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        if server is not None:
            server.close()
    assert proc.returncode == 0, f"{path.name} snippets failed:\n{proc.stderr[-4000:]}"
