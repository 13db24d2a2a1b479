"""`validate` flags every tar member our writer would not write, and the README's plain-webdataset reading (decoders
restricted to our keys) never unpickles such a member, where a bare `.decode("rgb8")` does."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from typer.testing import CliRunner

from flows.cli import app
from flows.pipeline import layout
from flows.pipeline.checks import validate_tar
from flows.pipeline.export import exported_tars
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import SHARD_STAGES
from tests.flows.conftest import make_inputs, tiny_config


class _Trap:
    """Unpickling this creates the folder `marker` (what any code run by a malicious pickle could do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("members") / "root"
    root.mkdir()
    config = tiny_config()
    ingest(root, make_inputs(root, clips=2, qa_clips=1), config)
    for shard in layout.shards(layout.open_root(root)):
        for stage in SHARD_STAGES:
            run_stage(root, stage, shard, config)
    return root


def _with_extra_member(source: Path, target: Path, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> Path:
    """A copy of `source` with one more member, named after the first record's key so readers group it in."""
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]
    key = members[0][0].name.split(".", 1)[0]
    with tarfile.open(target, "w") as out:
        for index, (member, payload) in enumerate(members):
            out.addfile(member, io.BytesIO(payload) if payload is not None else None)
            if index == 0:
                extra = tarfile.TarInfo(name.format(key=key))
                extra.type = kind
                if kind == tarfile.SYMTYPE:
                    extra.linkname = "/etc/passwd"
                else:
                    extra.size = len(data)
                out.addfile(extra, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return target


def test_our_own_tars_have_no_unexpected_member(exported: Path) -> None:
    tars = exported_tars(exported)
    assert tars
    assert all(validate_tar(tar).problems == () for tar in tars)


REG = tarfile.REGTYPE
FOREIGN = [("{key}.pyd", REG), ("{key}.pickle", REG), ("{key}.pth", REG), ("{key}.txt", REG), ("sub/{key}.json", REG),
           ("{key}.00.jpg.pyd", REG), ("{key}.05.jpg", tarfile.SYMTYPE)]


@pytest.mark.parametrize(("name", "kind"), FOREIGN)
def test_validate_flags_every_member_we_did_not_write(exported: Path, tmp_path: Path, name: str, kind: bytes) -> None:
    tar = _with_extra_member(Path(exported_tars(exported)[0]), tmp_path / "train-000000.tar", name,
                             pickle.dumps(_Trap(str(tmp_path / "pwned"))), kind)
    problems = validate_tar(tar).problems
    assert any("unexpected member" in p and name.split("{key}")[-1] in p for p in problems), problems
    assert not (tmp_path / "pwned").exists()  # validating never unpickles


def test_the_validate_command_fails_on_a_pickle_member(exported: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(exported, root)
    first = Path(exported_tars(root)[0])
    _with_extra_member(Path(exported_tars(exported)[0]), first, "{key}.pyd", pickle.dumps(_Trap(str(tmp_path / "x"))))
    result = CliRunner().invoke(app, ["validate", "--root", str(root)])
    assert result.exit_code == 1 and "unexpected member" in result.output and ".pyd" in result.output


# The reading shown in README.md ("Validating shards and reading them safely"):
OURS = ["json", *(f"{i:02d}.jpg" for i in range(100))]  # the only members our shards carry


def _safe_dataset(urls: list[str]) -> wds.WebDataset:
    return (wds.WebDataset(urls, shardshuffle=False)
            .map(lambda sample: {k: v for k, v in sample.items() if k in OURS or k.startswith("__")})
            .decode("rgb8", only=OURS))


def test_the_documented_plain_webdataset_reading_never_unpickles(exported: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    tar = _with_extra_member(Path(exported_tars(exported)[0]), tmp_path / "train-000000.tar", "{key}.pyd",
                             pickle.dumps(_Trap(str(marker))))
    samples = list(_safe_dataset([str(tar)]))
    assert samples and all("pyd" not in sample for sample in samples) and "json" in samples[0]
    assert samples[0]["00.jpg"].ndim == 3
    assert not marker.exists()
    list(wds.WebDataset([str(tar)], shardshuffle=False).decode("rgb8"))  # the reading the issue reported
    assert marker.exists(), "a bare .decode() no longer unpickles: this test's trap is no longer a trap"
