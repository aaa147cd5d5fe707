# Sphinx configuration for stpredict (cookiecutter-scverse style).
#
# Build (warnings are errors):  python -m sphinx -W -b html docs docs/_build/html
# Cross-links to other projects (intersphinx) need the network and are off by default;
# enable them with STPREDICT_DOCS_INTERSPHINX=1 (on by default on Read the Docs).
from __future__ import annotations

import os
import sys
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))  # build from a checkout even when not installed

# -- Project information -------------------------------------------------------------------

try:
    info = metadata("stpredict")
    project = info["Name"]
    release = info["Version"]
except Exception:  # noqa: BLE001 (not installed: fall back to the source tree)
    project, release = "stpredict", "0.0.0+unknown"
author = "stpredict developers"
copyright = f"{datetime.now():%Y}, {author}"
version = ".".join(release.split(".")[:2])

repository_url = "https://github.com/stpredict/stpredict"
html_context = {
    "display_github": True,
    "github_user": "stpredict",
    "github_repo": "stpredict",
    "github_version": "main",
    "conf_py_path": "/docs/",
}

# -- General configuration -----------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",  # after napoleon
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
master_doc = "index"
default_role = "literal"
nitpicky = False
needs_sphinx = "7.0"

source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}

# autodoc / autosummary: pages are generated into docs/generated (gitignored)
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_default_options = {"show-inheritance": False}
autoclass_content = "class"

# numpydoc-style docstrings through napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_ivar = True  # "Attributes" sections as fields: no duplicates with documented properties
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]

# sphinx-autodoc-typehints
typehints_defaults = "braces"
always_document_param_types = False
typehints_document_rtype = True

# MyST / MyST-NB: notebooks are committed already executed
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
myst_url_schemes = ("http", "https", "mailto")
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"

# -- Intersphinx (opt-in: needs the network) -----------------------------------------------

_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
}
_use_intersphinx = os.environ.get("STPREDICT_DOCS_INTERSPHINX", "").lower() in {"1", "true", "yes"} or (
    os.environ.get("READTHEDOCS") == "True"
)
intersphinx_mapping = _INTERSPHINX if _use_intersphinx else {}
intersphinx_timeout = 10

# -- HTML output ---------------------------------------------------------------------------

html_theme = "furo"
html_title = "stpredict"
html_static_path = ["_static"] if (HERE / "_static").is_dir() else []
html_show_sphinx = False
html_theme_options = {
    "source_repository": repository_url,
    "source_branch": "main",
    "source_directory": "docs/",
}
pygments_style = "default"
pygments_dark_style = "monokai"


# -- Set-up ----------------------------------------------------------------------------------


_TORCH_FLAGS = {"call_super_init", "dump_patches", "training"}  # plain values on nn.Module


def _skip_torch_members(app, what, name, obj, skip, options):
    """Leave out what the models inherit from ``torch.nn.Module`` (``to``, ``state_dict``, …)."""
    if name in _TORCH_FLAGS or (getattr(obj, "__module__", None) or "").startswith("torch."):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_torch_members)
