"""Every GPU check of the project in one run on a lent GPU machine, ending in ONE JSON line (`scripts/gpu_check.sh`).

The lent machine (one H100 or H200, Python 3.12, PyTorch 2.11 and transformers 5.17 preinstalled, no prefect, no
network) gets the working tree and `gpu-wheels/` (`make gpu-wheels`: our wheel and the small wheels the checks need
beyond torch and transformers, with `MANIFEST.tsv`). This script, standard library only, then:

1. installs those wheels with `pip install --no-index --no-deps --target` into a throwaway folder put first on
   PYTHONPATH (the interpreter's own site-packages, and so its torch, are never written; a wheel marked
   `if-missing` is skipped when the machine has that distribution), and checks torch is still the machine's;
2. imports every module the checks use from the installed wheel (outside the working tree) and checks that
   prefect stayed out;
3. runs the `gpu`-marked checks (`GPU_TESTS`) with pytest on the device, one `checks` entry per test;
4. runs `benchmarks/train_step.py --cuda` (Qwen2-1.5B-shaped LLM + SigLIP so400m, 16 frames, bf16: tokens/s, MFU,
   peak memory) and `benchmarks/object_encoder.py --device cuda`, one `checks` entry each with their figures.

`--cpu-dry-run` runs the same steps on the CPU at tiny sizes (`VIDEOREFER_GPU_CHECK_DEVICE=cpu`, tiny benchmark
presets), which CI does in a Python that has only torch and transformers (`scripts/gpu_dry_run.sh`). Every step
has its own time limit inside the overall budget (8 minutes on a GPU), so a hang costs one entry, not the lease.
Exit 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_TESTS = (
    "tests/model/test_cuda.py",
    "tests/model/training/test_fsdp_cuda.py",
    "tests/agents/backends/test_sam2_transformers_cuda.py",
)
# What the checks import from our code (the tests import more of it from the working tree).
MODULES = (
    "model.modeling", "model.processing", "model.inference", "model.object_encoder", "model.training.loop",
    "model.training.loader", "model.training.synthetic", "model.training.checkpointing", "engine.masks",
    "storage.samples",
)
FORBIDDEN = ("prefect", "flows", "agents")  # never imported by model/engine/storage (tests/test_architecture.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--wheels", type=Path, default=REPO / "gpu-wheels", help="made by `make gpu-wheels`")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="the whole run's time limit (default 450 on a GPU, 1500 for the dry run)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the install folder and logs here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- decisions (plain functions, unit-tested)


def read_manifest(wheels: Path) -> list[dict[str, str]]:
    """`MANIFEST.tsv` rows in install order: wheel file, distribution name, rule (`always` or `if-missing`)."""
    rows = []
    for number, line in enumerate((wheels / "MANIFEST.tsv").read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[2] not in ("always", "if-missing"):
            raise ValueError(f"MANIFEST.tsv line {number}: expected 'wheel<TAB>distribution<TAB>rule', got {line!r}")
        wheel, dist, rule = parts
        if not (wheels / wheel).is_file():
            raise ValueError(f"MANIFEST.tsv names {wheel}, which is not in {wheels}")
        if dist.lower().replace("_", "-") in ("torch", "transformers", "nvidia-cudnn-cu13", "triton"):
            raise ValueError(f"MANIFEST.tsv carries {dist}: the machine's own must stay")
        rows.append({"wheel": wheel, "dist": dist, "rule": rule})
    return rows


def wheels_to_install(rows: list[dict[str, str]], present: dict[str, str | None]) -> list[dict[str, str]]:
    """The rows to install: every `always` row, and `if-missing` rows whose distribution the machine lacks."""
    return [row for row in rows if row["rule"] == "always" or present.get(row["dist"]) is None]


def test_outcomes(junit_xml: Path) -> dict[str, dict]:
    """One entry per test case of a pytest JUnit XML report: status (passed, failed, skipped), seconds, message."""
    outcomes: dict[str, dict] = {}
    for case in ElementTree.parse(junit_xml).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = f"{module.removeprefix('tests/')}.py::{case.get('name')}"
        entry: dict = {"status": "passed", "seconds": round(float(case.get("time", 0.0)), 2)}
        for kind, status in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            found = case.find(kind)
            if found is not None:
                entry["status"] = status
                entry["message"] = (found.get("message") or found.text or "")[:300]
                break
        outcomes[name] = entry
    return outcomes


def last_json_line(text: str) -> dict | None:
    """The last line of `text` that parses as a JSON object (a benchmark's result)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def overall(checks: dict[str, dict]) -> str:
    return "passed" if checks and all(entry.get("status") == "passed" for entry in checks.values()) else "failed"


# ---------------------------------------------------------------- steps


class Budget:
    """The run's deadline: each step gets at most its own limit and never more than what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def limit(self, wanted: float) -> float:
        return max(1.0, min(wanted, self.end - time.monotonic()))


def _run(command: list[str], *, env: dict[str, str], timeout: float, cwd: Path, log: Path) -> tuple[int | None, str]:
    """Run a command; (exit code or None on timeout, its merged output), the output also written to `log`."""
    try:
        done = subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        code, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as expired:
        code = None
        captured = expired.stdout or ""
        output = captured if isinstance(captured, str) else captured.decode(errors="replace")
    log.write_text(output)
    return code, output


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-600:]


def _probe(python: str, env: dict[str, str], cwd: Path) -> dict:
    code = (
        "import json, sys, importlib.metadata as m, importlib.util as u\n"
        "import torch, transformers\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, 'torch_file': torch.__file__,"
        " 'transformers': transformers.__version__, 'cuda': cuda,"
        " 'device_name': torch.cuda.get_device_name() if cuda else 'cpu',"
        " 'flash_attn': m.version('flash-attn') if u.find_spec('flash_attn') else None}))\n"
    )
    done = subprocess.run([python, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"torch/transformers do not import: {_tail(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _present(python: str, dists: list[str], env: dict[str, str]) -> dict[str, str | None]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "def v(d):\n    try:\n        return m.version(d)\n    except m.PackageNotFoundError:\n        return None\n"
        "print(json.dumps({d: v(d) for d in sys.argv[1:]}))\n"
    )
    done = subprocess.run([python, "-c", code, *dists], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(done.stdout)


def install_wheels(python: str, wheels: Path, rows: list[dict[str, str]], site: Path, env: dict[str, str],
                   log: Path) -> str:
    """Install the rows into `site` without dependencies or an index (pip, or plain unzipping without pip)."""
    files = [str(wheels / row["wheel"]) for row in rows]
    if not files:
        return "nothing to install"
    has_pip = subprocess.run([python, "-m", "pip", "--version"], env=env, capture_output=True).returncode == 0
    if has_pip:
        pip_env = {**env, "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
        done = subprocess.run([python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                               "--no-warn-script-location", "--target", str(site), *files],
                              env=pip_env, capture_output=True, text=True, timeout=300)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"pip install --target failed: {_tail(done.stdout + done.stderr)}")
        return "pip"
    for file in files:  # a wheel is a zip of its importable tree: enough for pure-Python and binary wheels alike
        with zipfile.ZipFile(file) as archive:
            archive.extractall(site)
    return "unzip"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    dry = args.cpu_dry_run
    budget = Budget(args.budget_s or (1500.0 if dry else 450.0))
    python = sys.executable
    work = Path(args.keep or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    site, logs = work / "site", work / "logs"
    site.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    base_env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PIP_CONSTRAINT")}
    base_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "PYTHONUNBUFFERED": "1", "VIDEOREFER_GPU_CHECK_DEVICE": "cpu" if dry else "cuda"})
    env = {**base_env, "PYTHONPATH": str(site)}
    report: dict = {"gpu_check": "failed", "dry_run": dry, "checks": {}}
    checks: dict[str, dict] = report["checks"]

    def finish(code: int) -> int:
        report["total_s"] = round(time.monotonic() - started, 1)
        report["work_dir"] = str(work)
        print(json.dumps(report), flush=True)
        return code

    # 1. the machine, and the wheels it gets
    step = time.monotonic()
    try:
        machine = _probe(python, base_env, work)
        report.update({key: machine[key] for key in ("python", "torch", "transformers", "device_name",
                                                     "flash_attn")})
        if not dry and not machine["cuda"]:
            report["error"] = "no CUDA device visible to torch (use --cpu-dry-run on a CPU machine)"
            return finish(2)
        rows = read_manifest(args.wheels)
        present = _present(python, [row["dist"] for row in rows], base_env)
        chosen = wheels_to_install(rows, present)
        method = install_wheels(python, args.wheels, chosen, site, base_env, logs / "install.log")
        after = _probe(python, env, work)
        if (after["torch"], after["torch_file"]) != (machine["torch"], machine["torch_file"]):
            raise RuntimeError(f"the install replaced torch: {machine['torch']} -> {after['torch']}")
        report["wheels"] = {"method": method, "installed": [row["wheel"] for row in chosen],
                            "machine_has": {row["dist"]: present[row["dist"]] for row in rows if row not in chosen}}
        checks["install_wheels"] = {"status": "passed", "seconds": round(time.monotonic() - step, 1)}
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as error:
        checks["install_wheels"] = {"status": "failed", "message": str(error)[:600]}
        return finish(1)

    # 2. our modules from the installed wheel, without prefect
    step = time.monotonic()
    code = (
        "import importlib, json, sys\n"
        f"mods = {list(MODULES)!r}\n"
        "for name in mods:\n    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {list(FORBIDDEN)!r})\n"
        "origin = importlib.import_module('model').__file__\n"
        "print(json.dumps({'forbidden': bad, 'model_from': origin}))\n"
    )
    result, output = _run([python, "-c", code], env=env, timeout=budget.limit(180), cwd=work,
                          log=logs / "imports.log")
    found = last_json_line(output) if result == 0 else None
    if found is None:
        checks["imports"] = {"status": "failed" if result is not None else "timeout", "message": _tail(output)}
    elif found["forbidden"] or not str(found["model_from"]).startswith(str(site)):
        checks["imports"] = {"status": "failed", "message": f"imported {found['forbidden']}; model from "
                             f"{found['model_from']} (expected the installed wheel under {site})"}
    else:
        checks["imports"] = {"status": "passed", "seconds": round(time.monotonic() - step, 1)}

    # 3. the gpu-marked tests
    junit = logs / "junit.xml"
    pytest_limit = budget.limit(1200 if dry else 300)
    result, output = _run([python, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gpu", "-q", "-rfEs",
                           f"--junitxml={junit}", *GPU_TESTS],
                          env=env, timeout=pytest_limit, cwd=REPO, log=logs / "pytest.log")
    outcomes = test_outcomes(junit) if junit.is_file() else {}
    checks.update(outcomes)
    if result is None or not outcomes or result not in (0, 1):
        status = "timeout" if result is None else "failed"
        checks["pytest"] = {"status": status, "exit_code": result, "message": _tail(output)}

    # 4. the benchmarks
    if dry:
        train = ["--cuda", "--device", "cpu", "--preset", "tiny", "--frames", "8", "--micro-batch", "1",
                 "--steps", "2"]
        encoder = ["--device", "cpu", "--objects", "4", "--frames", "4", "--repeats", "1"]
    else:
        train = ["--cuda", "--preset", "1.5b", "--frames", "16", "--micro-batch", "2", "--steps", "6"]
        encoder = ["--device", "cuda", "--threads", "0"]
    for name, script, arguments, wanted in (("train_step", "benchmarks/train_step.py", train, 300),
                                           ("object_encoder", "benchmarks/object_encoder.py", encoder, 120)):
        step = time.monotonic()
        result, output = _run([python, script, *arguments], env=env, timeout=budget.limit(wanted), cwd=REPO,
                              log=logs / f"{name}.log")
        figures = last_json_line(output) if result == 0 else None
        if figures is None:
            checks[name] = {"status": "timeout" if result is None else "failed", "message": _tail(output)}
        else:
            checks[name] = {"status": "passed", "seconds": round(time.monotonic() - step, 1), **figures}

    report["gpu_check"] = overall(checks)
    return finish(0 if report["gpu_check"] == "passed" else 1)


if __name__ == "__main__":
    sys.exit(main())
