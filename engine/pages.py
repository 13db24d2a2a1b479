"""HTML pages from jinja2 templates with autoescaping: the one template environment every page of the suite uses.

A page's templates live as package data beside the module that renders them (`<package>/templates/*.html.j2`),
loaded by `jinja2.PackageLoader`, so they ship in the wheel and in an editable install alike. Every value a
template prints is HTML-escaped unless a template marks it safe; an undefined name is an error, never an empty
string. jinja2 is imported on first use.
"""

from __future__ import annotations

import functools
from typing import Any

TEMPLATE_FOLDER = "templates"


@functools.lru_cache(maxsize=8)
def environment(package: str) -> Any:
    """The jinja2 environment of `package`'s templates (autoescaping on, strict undefined), built once."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, TEMPLATE_FOLDER),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_template(package: str, template: str, **context: Any) -> str:
    """The text of `package`'s template `template` rendered with `context` (every value escaped)."""
    return environment(package).get_template(template).render(**context)
