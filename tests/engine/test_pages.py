"""`engine.pages`: templates render with autoescaping and strict names; every page's templates ship as package data;
no module under flows/ writes HTML markup in Python strings (f-strings or not): pages come from templates."""

from __future__ import annotations

import ast
import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from engine.pages import TEMPLATE_FOLDER, environment, render_template

REPO = Path(__file__).resolve().parents[2]
# An HTML element in a Python string: `<div`, `</td>`, `<!DOCTYPE`, ... (not `<root>` or `<region>` words).
_MARKUP = re.compile(
    r"<(?:!doctype|/?(?:html|head|body|title|style|script|div|span|p|a|b|i|em|strong|code|pre|table|thead|tbody|"
    r"tr|td|th|img|figure|figcaption|ul|ol|li|dl|dt|dd|h[1-6]|section|article|header|footer|nav|main|button|input|"
    r"label|form|br|hr|meta|link|iframe)\b)",
    re.IGNORECASE,
)


def _template_folders() -> list[Path]:
    return sorted(p for p in REPO.glob(f"*/**/{TEMPLATE_FOLDER}") if p.is_dir() and ".venv" not in p.parts)


def test_values_are_escaped_and_an_unknown_name_is_an_error() -> None:
    page = environment("flows.reporting").from_string('<p title="{{ v }}">{{ v }}</p>')
    assert page.render(v='<b>"&\'') == '<p title="&lt;b&gt;&#34;&amp;&#39;">&lt;b&gt;&#34;&amp;&#39;</p>'
    with pytest.raises(Exception, match="undefined"):
        environment("flows.reporting").from_string("{{ missing }}").render()
    with pytest.raises(Exception, match="undefined"):
        render_template("flows.reporting", "report.html.j2")  # the page's values are required, never blank


def test_every_template_folder_is_package_data_of_its_package() -> None:
    folders = _template_folders()
    assert {f.parent.relative_to(REPO).as_posix() for f in folders} >= {"flows/reporting", "flows/audit"}
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for folder in folders:
        package = ".".join(folder.parent.relative_to(REPO).parts)
        assert (folder.parent / "__init__.py").is_file(), f"{package} is not a package"
        globs = [*package_data.get(package, []), *package_data.get("*", [])]
        for template in folder.iterdir():
            relative = template.relative_to(folder.parent).as_posix()
            assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{package}: {relative} would not ship"
            assert template.name.endswith(".j2")
            environment(package).get_template(template.name)  # the loader finds it, and it parses


def _markup_in_strings(path: Path, base: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = {id(node.format_spec) for node in ast.walk(tree) if isinstance(node, ast.FormattedValue)}  # `{x:<16}`
    skip |= {id(node.body[0].value) for node in ast.walk(tree)  # docstrings may name an element
             if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body
             and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            parts = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if parts.lstrip().startswith("<") or _MARKUP.search(parts):
                found.append(f"{path.relative_to(base)}:{node.lineno}: f-string {parts[:60]!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MARKUP.search(node.value):
            found.append(f"{path.relative_to(base)}:{node.lineno}: string {node.value[:60]!r}")
    return sorted(found)


def test_no_module_under_flows_builds_html_in_python_strings() -> None:
    found = [hit for path in sorted((REPO / "flows").rglob("*.py")) for hit in _markup_in_strings(path)]
    assert not found, "\n".join(found)


def test_the_markup_check_finds_an_html_f_string(tmp_path: Path) -> None:
    module = tmp_path / "page.py"
    module.write_text('def card(x):\n    """A <div> card."""\n    return f"<div class=\\"card\\">{x:<8}</div>"\n'
                      'ROW = "<tr><td>static</td></tr>"\nWORD = "<root>/reports"\nALIGN = f"{WORD:<16}"\n')
    hits = _markup_in_strings(module, tmp_path)
    assert [hit.split(":")[1] for hit in hits] == ["3", "4"]
