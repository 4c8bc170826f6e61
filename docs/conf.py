"""Sphinx configuration for adamx's documentation.

Build (warnings are errors, as in CI)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

# -- Project ---------------------------------------------------------------------------------------

project = "adamx"
author = "The adamx authors"
copyright = "The adamx authors"
try:
    release = _version("adamx")
except PackageNotFoundError:  # a source tree that was not installed
    release = "0.0.0+unknown"
version = ".".join(release.split(".")[:2])

# -- General ---------------------------------------------------------------------------------------

extensions = [
    "myst_nb",  # Markdown and notebooks (it loads myst_parser itself; do not add that too)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
# No sphinx.ext.intersphinx: the build must not need the network.

root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# `name` in a docstring is a cross-reference (`adam`, `adamx.chain`, `EmaState`), as in optax.
default_role = "py:obj"

# -- Notebooks (myst_nb) ---------------------------------------------------------------------------

# There are no notebooks yet. The notebooks issue switches this to "cache" when they land, so the
# build executes each notebook once and reuses the outputs while its code is unchanged.
nb_execution_mode = "off"

# -- Autodoc / napoleon ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show `learning_rate: ScalarOrSchedule` rather than the union it stands for. (Params, Updates and
# OptState are left out: Sphinx 9 prints them as `TypeAliasForwardRef(...)` inside `tuple[...]`.)
autodoc_type_aliases = {"ScalarOrSchedule": "ScalarOrSchedule"}

# Fail on every cross-reference that does not resolve, so a misspelled `name` in a docstring breaks
# the build. Without intersphinx, annotations naming jax/numpy types and adamx's private aliases and
# protocols (adamx.core._base) cannot resolve; those alone are exempt.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(jax|jaxlib|numpy|np)\..*"),
    ("py:class", r"(collections\.abc|typing)\..*"),  # the standard library, without intersphinx
    ("py:class", r"(adamx\._base\.)?(ScalarOrSchedule|Schedule|InitFn|UpdateFn)"),
    # Sphinx renders `ScalarOrSchedule | None` through this internal wrapper class.
    ("py:class", r"TypeAliasForwardRef"),
]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML ------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"adamx {release}"
html_theme_options = {
    "repository_url": "https://github.com/adamx-dev/adamx",
    "use_repository_button": True,
    "path_to_docs": "docs",
}
html_static_path = ["_static"]
