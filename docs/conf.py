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
    "sphinx_design",  # the Tutorials gallery's grid of cards
]
# No sphinx.ext.intersphinx: the build must not need the network.

root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# `name` in a docstring is a cross-reference (`adam`, `adamx.chain`, `EmaState`), as in optax.
default_role = "py:obj"

# -- Notebooks (myst_nb) ---------------------------------------------------------------------------

# The Tutorials gallery (tutorials/index.md) shows the notebooks of notebooks/ with the outputs
# stored in them: the build never executes one (tests/test_notebooks.py runs them all), so it needs
# neither a kernel nor the notebooks' dependencies.
nb_execution_mode = "off"
# `$...$` and `$$...$$` in Markdown pages and in the notebooks' text cells are math.
myst_enable_extensions = ["dollarmath"]


def _stage_tutorials() -> None:
    """Copy the notebooks and their thumbnails into tutorials/ (git ignores the copies)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "tutorials" / "gallery.py"
    spec = importlib.util.spec_from_file_location("adamx_docs_gallery", path)
    gallery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gallery)
    gallery.stage()


# Run as this file loads, which is before Sphinx lists the source files.
_stage_tutorials()

# -- Autodoc / napoleon ----------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show `learning_rate: ScalarOrSchedule` rather than the union it stands for; each alias links to
# its entry on the API's types page (docs/api/types.md, generated with the pages by tests/generate).
autodoc_type_aliases = {
    name: name for name in ("ScalarOrSchedule", "Schedule", "Params", "Updates", "OptState")
}
# Each API page opens with a table of its names (`.. autosummary::`, written by tests/generate).
extensions.append("sphinx.ext.autosummary")


def _alias_names(app, what, name, obj, options, signature, return_annotation):
    """Sphinx 9 prints an alias inside a union or a tuple as `TypeAliasForwardRef('Params')`;
    print its name, which links to the types page."""
    import re

    def plain(text):
        return text and re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r"\1", text)

    return plain(signature), plain(return_annotation)


def setup(app):
    app.connect("autodoc-process-signature", _alias_names)


# Fail on every cross-reference that does not resolve, so a misspelled `name` in a docstring breaks
# the build. Without intersphinx, annotations naming jax/numpy types and the standard library's
# cannot resolve; those alone are exempt (adamx's own aliases resolve to the types page).
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(jax|jaxlib|numpy|np)\..*"),
    ("py:class", r"(collections\.abc|typing)\..*"),  # the standard library, without intersphinx
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
# Tighter tables and always-visible sideways scrollbars for wide tables and code blocks.
html_css_files = ["custom.css"]
