"""Self-contained modeling files in saved model folders, so plain transformers loads them with `trust_remote_code`.

A folder `save_model_folder` writes carries `configuration_videorefer.py`, `modeling_videorefer.py` and the three
modules they need (`connector_videorefer.py`, `object_encoder_videorefer.py`, `vision_videorefer.py`), and its
`config.json` an `auto_map` naming them, the usual Hub way: `AutoConfig.from_pretrained(folder,
trust_remote_code=True)` and `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` then work in a
Python that has torch and transformers but not this suite. The files are copies of this package's own modules made
at save time (so they always match the code that wrote the weights), with the imports between them made relative
(transformers copies relative imports along with the module), `engine.errors.ConfigError` replaced by a local
`ValueError` subclass and the local `Auto*.register` calls dropped (a remote copy must not re-register
"videorefer" over this package's classes in a process that has both). Where this package is imported, transformers
prefers its registered classes over the folder's copies, so our own loaders are unaffected.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

# Our module -> its file name in a saved folder.
MODULES = {
    "configuration": "configuration_videorefer",
    "modeling": "modeling_videorefer",
    "connector": "connector_videorefer",
    "object_encoder": "object_encoder_videorefer",
    "vision": "vision_videorefer",
}
AUTO_MAP = {
    "AutoConfig": "configuration_videorefer.VideoReferConfig",
    "AutoModelForCausalLM": "modeling_videorefer.VideoReferForCausalLM",
}
# Top-level packages of this suite: a remote copy must import none of them.
SUITE_PACKAGES = frozenset({"model", "engine", "storage", "agents", "flows"})

_HEADER = (
    "# Written by the VideoRefer suite from its model/{source}.py when this folder was saved. transformers imports\n"
    "# it with trust_remote_code=True (config.json `auto_map`); it needs torch and transformers, not the suite.\n"
)
_CONFIG_ERROR = (
    "class ConfigError(ValueError):\n"
    '    """A configuration problem (engine.errors.ConfigError in the VideoRefer suite)."""\n'
)
_REGISTER = re.compile(r"^(?:# .*\n)?Auto\w+\.register\(.*\)\n", re.MULTILINE)


def remote_source(name: str) -> str:
    """The folder copy of our module `name` (a key of MODULES): relative imports, no suite imports, no registration."""
    source = (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
    for ours, theirs in MODULES.items():
        source = re.sub(rf"^from model\.{ours} import", f"from .{theirs} import", source, flags=re.MULTILINE)
    source = re.sub(r"^from engine\.errors import ConfigError\n", _CONFIG_ERROR, source, flags=re.MULTILINE)
    source = _REGISTER.sub("", source)
    return _HEADER.format(source=name) + source


def suite_imports(source: str) -> list[str]:
    """Absolute imports of this suite's packages left in `source` (anywhere, lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] in SUITE_PACKAGES]
        elif (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
              and node.module.split(".")[0] in SUITE_PACKAGES):
            found.append(node.module)
    return found


def write_remote_code(directory: str | Path) -> bool:
    """Write the modeling files into `directory` and add `auto_map` to its `config.json`; True when done.

    A copy that would still import the suite (a module gained an import the rewrite does not know) is not written
    and a warning says so: the folder then loads with this package only, as before, and never half-way.
    """
    directory = Path(directory)
    sources = {theirs: remote_source(ours) for ours, theirs in MODULES.items()}
    leftover = sorted({name for source in sources.values() for name in suite_imports(source)})
    if leftover:
        warnings.warn(
            f"model folder {directory} gets no remote code: the modeling files would import {leftover}; it loads "
            "with the VideoRefer suite installed only",
            stacklevel=2,
        )
        return False
    for name, source in sources.items():
        (directory / f"{name}.py").write_text(source, encoding="utf-8")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = dict(AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True
