"""Sphinx configuration of the vumi-salt docs: ``.venv/bin/python -m sphinx -W -b html docs docs/_build``."""

import vumi_version

project = "vumi-salt"
copyright = "the vumi-salt authors"  # noqa: A001  (Sphinx's name)
release = version = vumi_version.VERSION

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
# the pages link to the files of the checkout (salt/_modules/vumi.py...), which are not pages
suppress_warnings = ["myst.xref_missing"]
autodoc_member_order = "bysource"
html_theme = "alabaster"
html_theme_options = {"description": "Deploy Python web apps with Salt", "fixed_sidebar": True}
