"""Allowed roots: a local path from outside (a manifest row, a 700K item) is resolved and must lie inside one.

`resolve_allowed` resolves `..` and every symlink (the path need not exist yet) and checks the result against the
resolved roots, so `../x.mp4`, an absolute path elsewhere and a symlink inside the root that points out of it are
all refused with `PathNotAllowedError` before anything opens the file. `allow_outside` (the config's
`paths.allow_outside`, an explicit choice of the user) turns the check off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from engine.errors import PathNotAllowedError


def resolve_allowed(
    path: str | os.PathLike[str],
    roots: Iterable[str | os.PathLike[str]],
    *,
    base: str | os.PathLike[str] | None = None,
    allow_outside: bool = False,
) -> Path:
    """`path` (relative ones against `base`) resolved; `PathNotAllowedError` unless it lies inside one of `roots`."""
    given = Path(path).expanduser()
    if not given.is_absolute() and base is not None:
        given = Path(base) / given
    resolved = given.resolve()
    if allow_outside:
        return resolved
    allowed = [Path(root).expanduser().resolve() for root in roots]
    if any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        return resolved
    names = ", ".join(str(root) for root in allowed) or "none"
    raise PathNotAllowedError(
        f"{path} resolves to {resolved}, outside the allowed roots ({names}); add its folder to "
        "`paths.allowed_roots` in the config, or set `paths.allow_outside: true`"
    )
