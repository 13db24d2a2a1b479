"""Self-contained model and processor files in saved model folders, so plain transformers loads them.

A folder `save_model_folder` writes carries `configuration_videorefer.py`, `modeling_videorefer.py`,
`processing_videorefer.py` and the modules they need (connector, object encoder, vision tower, and the suite's
error, record and mask modules), its `config.json` an `auto_map` naming the model classes and its
`processor_config.json` one naming the processor, the usual Hub way: `AutoConfig`, `AutoModelForCausalLM` and
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` then work in a Python that has torch and
transformers but not this suite (pycocotools only for COCO RLE masks). The files are copies of this suite's own
modules made at save time (so they always match the code that wrote the weights), with the imports between them
made relative (transformers copies relative imports along with the module) and the local `Auto*.register` calls
dropped (a remote copy must not re-register "videorefer" over this package's classes in a process that has both).
Where this package is imported, transformers prefers its registered classes over the folder's copies, so our own
loaders are unaffected (the processor has no registration: `AutoProcessor` always gives the folder's copy, the
same code)"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

# Our module (dotted) -> its file name in a saved folder. The processor's copy needs the three engine modules it
# uses (errors, record types, masks); masks import pycocotools only when an RLE is coded.
MODULES = {
    "model.configuration": "configuration_videorefer",
    "model.modeling": "modeling_videorefer",
    "model.connector": "connector_videorefer",
    "model.object_encoder": "object_encoder_videorefer",
    "model.vision": "vision_videorefer",
    "model.processing": "processing_videorefer",
    "engine.errors": "errors_videorefer",
    "engine.types": "types_videorefer",
    "engine.masks": "masks_videorefer",
    "engine.parsing": "parsing_videorefer",  # engine.types bounds its messages with it
}
AUTO_MAP = {
    "AutoConfig": "configuration_videorefer.VideoReferConfig",
    "AutoModelForCausalLM": "modeling_videorefer.VideoReferForCausalLM",
}
# transformers' AutoProcessor reads `auto_map` from this file first (transformers.utils.PROCESSOR_NAME).
PROCESSOR_CONFIG = "processor_config.json"
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_videorefer.VideoReferProcessor"}
# Top-level packages of this suite: a remote copy must import none of them.
SUITE_PACKAGES = frozenset({"model", "engine", "storage", "agents", "flows"})

_HEADER = (
    "# Written by the VideoRefer suite from its {source}.py when this folder was saved. transformers imports\n"
    "# it with trust_remote_code=True (config.json `auto_map`); it needs torch and transformers, not the suite.\n"
)
_REGISTER = re.compile(r"^(?:# .*\n)?Auto\w+\.register\(.*\)\n", re.MULTILINE)


def remote_source(name: str) -> str:
    """The folder copy of our module `name` (a key of MODULES): relative imports, no suite imports, no registration."""
    package, module = name.split(".")
    source = (Path(__file__).parents[1] / package / f"{module}.py").read_text(encoding="utf-8")
    for ours, theirs in MODULES.items():
        pattern = rf"^(\s*)from {re.escape(ours)} import"
        source = re.sub(pattern, rf"\1from .{theirs} import", source, flags=re.MULTILINE)
    source = _REGISTER.sub("", source)
    return _HEADER.format(source=f"{package}/{module}") + source


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


_RELATIVE = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.MULTILINE)
ENTRY_FILES = tuple(sorted({target.split(".")[0] for target in (*AUTO_MAP.values(), *PROCESSOR_AUTO_MAP.values())}))


def with_every_file_named_by_its_entry(sources: dict[str, str]) -> dict[str, str]:
    """`sources` with each entry file (one an `auto_map` names) importing every file it needs directly.

    transformers before 5.23 copies only the relative imports OF THE ENTRY FILE into its module cache, then follows
    relative imports through all copied files and fails on one it did not copy (`processing_videorefer` ->
    `types_videorefer` -> `parsing_videorefer`). One import line per file needed further down makes both the
    old and the new copying rule take every file.
    """
    out = dict(sources)
    for entry in ENTRY_FILES:
        direct = set(_RELATIVE.findall(sources[entry]))
        needed, todo = set(direct), list(direct)
        while todo:
            for name in _RELATIVE.findall(sources.get(todo.pop(), "")):
                if name not in needed and name != entry:
                    needed.add(name)
                    todo.append(name)
        missing = sorted(needed - direct)
        if missing:
            lines = "".join(f"from .{name} import __name__ as _{name}  # noqa: F401, E402  (copy with the entry)\n"
                            for name in missing)
            out[entry] = sources[entry] + "\n\n# Files this module needs through the ones it imports (older "\
                "transformers copy only an entry file's own relative imports).\n" + lines
    return out


def write_remote_code(directory: str | Path) -> bool:
    """Write the modeling files into `directory` and add `auto_map` to its `config.json`; True when done.

    A copy that would still import the suite (a module gained an import the rewrite does not know) is not written
    and a warning says so: the folder then loads with this package only, as before, and never half-way.
    """
    directory = Path(directory)
    sources = with_every_file_named_by_its_entry({theirs: remote_source(ours) for ours, theirs in MODULES.items()})
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
    processor_config = {"auto_map": dict(PROCESSOR_AUTO_MAP), "processor_class": "VideoReferProcessor"}
    (directory / PROCESSOR_CONFIG).write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
    return True
