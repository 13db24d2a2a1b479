"""scripts/gpu_check.py's decisions (manifest, what to install, reading pytest's report, the verdict) and the promise
that the modules the GPU checks import leave prefect, flows and agents out. The end-to-end run is CI's
`make gpu-dry-run` (scripts/gpu_dry_run.sh), too heavy for this suite."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def _wheels(tmp_path: Path, lines: list[str]) -> Path:
    for line in lines:
        if not line.startswith("#"):
            (tmp_path / line.split("\t")[0]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / line.split("\t")[0]).write_bytes(b"")
    (tmp_path / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_manifest_is_read_in_order_and_the_rules_decide_what_installs(tmp_path: Path) -> None:
    wheels = _wheels(tmp_path, [
        "# wheel\tdistribution\trule",
        "always/videorefer_suite-0.1.0-py3-none-any.whl\tvideorefer-suite\talways",
        "always/pytest-9.2.0-py3-none-any.whl\tpytest\talways",
        "if-missing/pillow-13.0.0-cp312-cp312-manylinux_2_28_x86_64.whl\tpillow\tif-missing",
        "if-missing/pycocotools-2.0.11-cp312-abi3-manylinux_2_28_x86_64.whl\tpycocotools\tif-missing",
    ])
    rows = gpu_check.read_manifest(wheels)
    assert [row["dist"] for row in rows] == ["videorefer-suite", "pytest", "pillow", "pycocotools"]
    present = {"videorefer-suite": None, "pytest": "8.0.0", "pillow": "11.0.0", "pycocotools": None}
    chosen = gpu_check.wheels_to_install(rows, present)
    # `always` installs even over the machine's pytest; the machine's Pillow is kept; the missing pycocotools comes.
    assert [row["dist"] for row in chosen] == ["videorefer-suite", "pytest", "pycocotools"]


@pytest.mark.parametrize(("line", "message"), [
    ("always/x-1-py3-none-any.whl\tx\tsometimes", "expected"),
    ("always/x-1-py3-none-any.whl\tx", "expected"),
    ("always/torch-2.11.0-cp312-cp312-linux_x86_64.whl\ttorch\tif-missing", "machine's own"),
    ("always/transformers-5.17.0-py3-none-any.whl\ttransformers\talways", "machine's own"),
])
def test_a_bad_manifest_line_or_a_torch_wheel_is_refused(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gpu_check.read_manifest(_wheels(tmp_path, [line]))


def test_a_manifest_naming_a_missing_wheel_is_refused(tmp_path: Path) -> None:
    (tmp_path / "MANIFEST.tsv").write_text("always/gone-1-py3-none-any.whl\tgone\talways\n")
    with pytest.raises(ValueError, match="not in"):
        gpu_check.read_manifest(tmp_path)


def test_pytest_outcomes_and_the_verdict(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
        'skipped="1" tests="3" time="9.1">'
        '<testcase classname="tests.model.test_cuda" name="test_forward[fp16]" time="1.234" />'
        '<testcase classname="tests.model.test_cuda" name="test_forward[bf16]" time="2.0">'
        '<failure message="AssertionError: max |logit error| 0.3">trace</failure></testcase>'
        '<testcase classname="tests.model.training.test_fsdp_cuda" name="test_fsdp" time="0.001">'
        '<skipped type="pytest.skip" message="no CUDA device">skip</skipped></testcase>'
        "</testsuite></testsuites>")
    outcomes = gpu_check.test_outcomes(report)
    assert outcomes["model/test_cuda.py::test_forward[fp16]"] == {"status": "passed", "seconds": 1.23}
    assert outcomes["model/test_cuda.py::test_forward[bf16]"]["status"] == "failed"
    assert "0.3" in outcomes["model/test_cuda.py::test_forward[bf16]"]["message"]
    assert outcomes["model/training/test_fsdp_cuda.py::test_fsdp"]["status"] == "skipped"
    assert gpu_check.overall(outcomes) == "failed"  # a skipped check is not a passed one
    assert gpu_check.overall({"a": {"status": "passed"}}) == "passed"
    assert gpu_check.overall({}) == "failed"


def test_a_benchmarks_result_is_its_last_json_line() -> None:
    text = 'Loading weights: 100%\n{"not": "this"}\nnoise\n{"benchmark": "train_step", "mfu": 0.41}\n'
    assert gpu_check.last_json_line(text) == {"benchmark": "train_step", "mfu": 0.41}
    assert gpu_check.last_json_line("Traceback ...\n{broken\n") is None


def test_the_modules_the_gpu_checks_import_leave_prefect_flows_and_agents_out() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(gpu_check.MODULES)!r}:\n    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & set(gpu_check.FORBIDDEN), loaded & set(gpu_check.FORBIDDEN)
    # nor a heavy library the lent machine lacks (it carries only gpu-wheels/)
    assert not loaded & {"cv2", "pyarrow", "av", "decord", "sam2", "pydantic", "s3fs"}
