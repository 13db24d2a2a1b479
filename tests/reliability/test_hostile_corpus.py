"""The hostile-input corpora of `tests.reliability.hostile`, class by class, and their fast in-process twins.

The command-level corpora (`slow`: each runs several real `videorefer` commands in bounded child processes) must
end with no crash, hang or silent outcome. The fast twins feed generated corpora of the same classes straight to
the parsing and bounding layer each class goes through (`engine.parsing`, the manifest reader, the 700K reader, the
config loader, the reply parser, the header check, the backend factory, the temp-file rule), in bounded time.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from engine.errors import BackendLoadError, BadVideoError, ConfigError, RejectReason
from engine.parsing import (
    DUPLICATE_KEYS,
    ParseError,
    clean_text,
    is_clean,
    load_yaml,
    loads_json,
    structure_problem,
    text_limit,
)
from tests.reliability import hostile


@pytest.mark.slow
@pytest.mark.parametrize("name", list(hostile.CLASSES))
def test_every_corpus_class_ends_typed(name: str, tmp_path: Path) -> None:
    figures = hostile.CLASSES[name](tmp_path)
    result = figures.as_json()
    assert result["typed"] > 0, result
    assert (result["crash"], result["hang"], result["silent"]) == (0, 0, 0), result


# ------------------------------------------------------------------------------------------ fast twins: parsers


def _random_json(rng: random.Random, depth: int = 0) -> bytes:
    """Random JSON-ish bytes: valid values, duplicate keys, deep nesting, huge numbers, bad UTF-8, surrogates."""
    choice = rng.randrange(12 if depth < 4 else 6)
    if choice == 0:
        return b"9" * rng.choice([1, 30, 5000, 40000])
    if choice == 1:
        return b'"' + rng.choice([b"ok", b"\\ud800", b"\xff\xfe", b"\\u0000\\u001b", b"x" * 100_000]) + b'"'
    if choice == 2:
        return rng.choice([b"NaN", b"Infinity", b"-1e999", b"null", b"true"])
    if choice == 3:
        return b"[" * rng.choice([10, 70, 3000]) + b"]" * rng.choice([10, 70, 3000])
    if choice in (4, 5):
        return b'"text"'
    if choice < 9:
        key = rng.choice([b'"a"', b'"video"', b'"\\udc80"'])
        return b"{" + b", ".join(key + b": " + _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))) + b"}"
    return b"[" + b", ".join(_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))) + b"]"


def test_random_json_parses_or_fails_typed_in_bounded_time() -> None:
    rng = random.Random(22)
    for _ in range(400):
        data = (b"\xef\xbb\xbf" if rng.random() < 0.1 else b"") + _random_json(rng)
        started = time.perf_counter()
        try:
            value = loads_json(data, "corpus")
        except ParseError as exc:
            assert len(str(exc)) < 600
        else:
            problem = structure_problem(value)
            assert problem is None or len(problem) < 600
        assert time.perf_counter() - started < 10.0  # generous: a loaded machine


def test_json_edges() -> None:
    assert loads_json(b"\xef\xbb\xbf[1]", "x") == [1]
    assert loads_json("1" + "0" * 400, "x") == float("inf")  # never Python's 4300-digit int error
    assert loads_json('{"a": 1, "a": 2}', "x")[DUPLICATE_KEYS] == ["a"]
    assert "repeats the key" in structure_problem(loads_json('[{"a": 1, "a": 2}]', "x"))
    assert "lone surrogate" in structure_problem(loads_json('{"v": "\\ud800"}', "x"))
    assert "deeper" in structure_problem(loads_json("[" * 100 + "]" * 100, "x"))
    with pytest.raises(ParseError, match="not UTF-8"):
        loads_json(b'{"a": "\xff"}', "x")
    with pytest.raises(ParseError, match="nests deeper"):
        loads_json("[" * 100_000 + "]" * 100_000, "x")
    with pytest.raises(ParseError) as error:
        loads_json("{" + '"k": ' * 10 + "x" * 1_000_000, "x")
    assert len(str(error.value)) < 300  # the message never renders the input


@pytest.mark.parametrize("text, match", [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]\n" for n in range(9)), "expands"),
    ("a: &a [*a]\n", "recursive"),
    ("shard_size: 5\nshard_size: 6\n", "appear twice"),
    ("x: " + "[" * 30_000 + "]" * 30_000, "nests deeper"),
    (f"shard_size: {'9' * 9000}\n", "cannot be read"),
    ("a: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("a: 1\x00\n", "not valid YAML"),
])
def test_hostile_yaml_is_one_config_error(text: str, match: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as error:
        load_yaml(text, "config")
    assert "\n" not in str(error.value) and len(str(error.value)) < 700
    assert time.perf_counter() - started < 30


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    from engine.config import load_config

    for data in (b"\xff\xfe", b"- a\n", b"shard_size: -1\nsampling: {num_frames: x}\n"):
        (tmp_path / "c.yaml").write_bytes(data)
        with pytest.raises(ConfigError) as error:
            load_config(tmp_path / "c.yaml")
        assert "\n" not in str(error.value)
    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfshard_size: 7\n")
    assert load_config(tmp_path / "c.yaml").shard_size == 7


def _manifest_line(rng: random.Random) -> bytes:
    row: dict[str, Any] = {"video": "v.mp4", "caption": "c"}
    atoms: list[Any] = [None, "", "\x00", "\ud800", "\u202e", "x" * 3000, 10**30, float("nan"), [], {}, [[[[]]]],
                        True, "/dev/zero", "1e309", {"name": ["x"], "masks": 5}]
    for _ in range(rng.randint(0, 3)):
        row[rng.choice(["video", "caption", "start", "end", "objects", "source_id"])] = rng.choice(atoms)
    line = json.dumps(row).encode("utf-8", "surrogatepass")
    mutation = rng.randrange(6)
    if mutation == 0:
        line = line.replace(b"\xed\xa0\x80", b"\xff")  # the surrogate's bytes: not UTF-8
    elif mutation == 1:
        line = line[:-1] + b', "caption": "dup"}'
    elif mutation == 2:
        line = line[: rng.randrange(len(line))]
    return line


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_random_manifest_rows_each_become_a_row_or_a_typed_problem(tmp_path: Path, fmt: str) -> None:
    from flows.pipeline.manifest import ManifestPolicy, read_manifest

    rng = random.Random(7)
    good = json.dumps({"video": "v.mp4", "caption": "a ball"}).encode()
    if fmt == "jsonl":
        lines = [b"\xef\xbb\xbf" + good, *(_manifest_line(rng) for _ in range(300)), good]
        path = tmp_path / "m.jsonl"
    else:
        cells = [b"x", b"\xff\xfe", b'"quoted, with\nnewline"', b"z" * 200_000, b"\x00", b"9" * 5000, b"a,b,c,d"]
        lines = [b"\xef\xbb\xbfvideo,caption,end", b"v.mp4,a ball,",
                 *(b",".join(rng.choice(cells) for _ in range(3)) for _ in range(300)), b"v.mp4,a ball,"]
        path = tmp_path / "m.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    started = time.perf_counter()
    rows = read_manifest(path, ManifestPolicy(allowed_roots=(Path("/"),), max_text_chars=2000))
    assert time.perf_counter() - started < 60
    assert rows[0].problem == "" and rows[0].caption == "a ball" and rows[-1].problem == ""
    for row in rows:
        assert isinstance(row.problem_reason, RejectReason)
        assert len(row.problem) < 2500
        if not row.problem:
            assert is_clean(row.caption) and is_clean(row.video_uri) and len(row.caption) <= 2000


def test_hostile_700k_items_are_rejected_alone(tmp_path: Path) -> None:
    from flows.pipeline.importing import HOSTILE, plan_import
    from tests.flows.conftest import tiny_config

    items = b'[{"video": "a.mp4", "video": "b.mp4"}, {"video": "\\ud800"}, {"video": "ok.mp4", "n": 1%s}]' % (
        b"0" * 5000)
    source = tmp_path / "700k.json"
    source.write_bytes(b"\xef\xbb\xbf" + items)
    chunks = plan_import(tmp_path / "root", source, tiny_config(shard_size=10))
    from storage.root import DatasetRoot

    data = json.loads((Path(DatasetRoot(tmp_path / "root").full_path("imports")) / next(
        (tmp_path / "root" / "imports").iterdir()).name / f"{chunks[0]}.json").read_text())
    assert [HOSTILE in item for item in data["items"]] == [True, True, False]
    source.write_bytes(b"\xff\xfe[]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        plan_import(tmp_path / "root2", source, tiny_config())


# ------------------------------------------------------------------------------------------ fast twins: texts


def test_clean_text_removes_controls_and_bidi_and_surrogates() -> None:
    assert clean_text("a\x00b\x1b[31mc\u202ed\u2066e\x7f\x85\tf\ng\ud800") == "ab[31mcde\tf\ng\ufffd"
    assert is_clean(clean_text("".join(chr(c) for c in range(0x0, 0x3000))))


def test_model_replies_are_bounded_and_cleaned() -> None:
    from agents.calling import parse_reply
    from agents.schemas import AnnotatorReply, QAReply
    from engine.errors import InvalidReplyError

    with text_limit(100):
        reply = parse_reply('{"appearance": "red\\u001b[2J \\u202eball", "motion": "rolls\\u0000", '
                            '"is_static": false}', AnnotatorReply)
        assert (reply.appearance, reply.motion) == ("red[2J ball", "rolls")
        for text in ('{"appearance": "' + "a" * 101 + '", "motion": "m", "is_static": false}',
                     "b" * 10_000_000):
            started = time.perf_counter()
            with pytest.raises(InvalidReplyError) as error:
                parse_reply(text, AnnotatorReply)
            assert error.value.reason == RejectReason.TEXT_TOO_LONG and time.perf_counter() - started < 10
        with pytest.raises(InvalidReplyError) as error:
            parse_reply('{"items": [{"question": "q", "answer": "' + "x" * 200 + '", "type": "basic", '
                        '"objects": [], "options": []}]}', QAReply)
        assert error.value.reason == RejectReason.TEXT_TOO_LONG


async def _no_repair_for_runaway_replies() -> None:
    from agents.backends.base import ChatReply, ChatRequest
    from agents.calling import Call, call_structured
    from agents.schemas import RefinerReply

    class Runaway:
        kind = "test"
        asked = 0

        async def complete_batch(self, requests: list[ChatRequest]) -> list[ChatReply]:
            Runaway.asked += len(requests)
            return [ChatReply(text="{\"caption\": \"" + "r" * 5_000_000 + "\"}", model="m", backend="test")
                    for _ in requests]

    call = Call(item_id="i", clip_id="c", request=ChatRequest(messages=(), task="t"))
    with text_limit(1000):
        outcomes = await call_structured(Runaway(), [call], RefinerReply, agent="a", stage="s", prompt_version="1")
    assert outcomes[0].reject is not None and outcomes[0].reject.reason == RejectReason.TEXT_TOO_LONG
    assert Runaway.asked == 1  # not asked again: a runaway reply costs as much the second time


def test_a_runaway_reply_is_rejected_without_a_repair() -> None:
    import asyncio

    asyncio.run(_no_repair_for_runaway_replies())


def test_samples_with_long_or_unclean_texts_fail_validation() -> None:
    from engine.types import Turn
    from storage.samples import conversation_problems

    turns = (Turn(role="human", value="<video>\nWhat is it?"), Turn(role="gpt", value="a\x1b ball"))
    assert [r for r, _ in conversation_problems(turns)] == [RejectReason.CONTROL_CHARACTERS]
    with text_limit(5):
        turns = (Turn(role="human", value="<video>\nWhat?"), Turn(role="gpt", value="a long answer"))
        assert RejectReason.TEXT_TOO_LONG in [r for r, _ in conversation_problems(turns)]


# ------------------------------------------------------------------------------------------ fast twins: others


def test_lying_headers_are_bad_video(tmp_path: Path) -> None:
    from engine.video import probe

    videos = hostile.lying_videos(tmp_path)
    assert probe(tmp_path / "good.mp4").fps == hostile.FPS
    for name in ("time scale 0", "time scale 1", "time scale 2^32-1", "frame duration 1 tick", "frame count 2^31-1"):
        with pytest.raises(BadVideoError):
            probe(videos[name])
    for name, path in videos.items():  # random bytes: bad_video, or read faithfully
        try:
            info = probe(path)
        except BadVideoError:
            continue
        assert 0.1 <= info.fps <= 1000, name


def test_backends_that_cannot_load_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from agents.backends.factory import build_grounder, build_segmenter
    from agents.stage import reject_for

    with pytest.raises(BackendLoadError, match="does not exist"):
        build_segmenter({"kind": "sam2", "model": str(tmp_path / "sam2.1-hiera-tiny")})
    with pytest.raises(BackendLoadError, match="does not exist"):
        build_segmenter({"kind": "sam3", "model": str(tmp_path / "sam3")})
    with pytest.raises(BackendLoadError, match="does not exist"):
        build_grounder({"kind": "grounding_dino", "model": str(tmp_path / "gdino")})
    monkeypatch.setitem(sys.modules, "transformers.models.sam2_video", None)  # an import that fails
    with pytest.raises(BackendLoadError, match="importing transformers.models.sam2_video failed"):
        build_segmenter({"kind": "sam2", "random_weights": True})
    with pytest.raises(ConfigError):  # an ImportError met while an item runs stops the run too
        reject_for(ModuleNotFoundError("No module named 'sam2'"), stage="segment", item_id="i", clip_id="c")


def test_the_next_writer_removes_temp_files_of_interrupted_writes(tmp_path: Path) -> None:
    from storage.root import DatasetRoot, is_temp_name

    names = ["export/wds/train-000000.tar.tmp-0123456789ab", "stages/a/.x.parquet.tmp-0123456789ab",
             "videos/.a.mp4.42.tmp", "manifest.jsonl.tmp", ".videorefer.lock.stale-0123456789ab"]
    kept = ["export/wds/train-000000.tar", "videos/a.mp4", "notes-tmp.txt"]
    for name in names + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert all(is_temp_name(Path(n).name) for n in names) and not any(is_temp_name(Path(n).name) for n in kept)
    with DatasetRoot(tmp_path).lock("test"):
        pass
    assert [n for n in names if (tmp_path / n).exists()] == []
    assert all((tmp_path / n).exists() for n in kept)


def test_a_failed_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from storage.root import DatasetRoot

    root = DatasetRoot(tmp_path)
    with pytest.raises(OSError), root.open_atomic("a/b.bin") as handle:
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in (tmp_path / "a").iterdir()] == []


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES", "ENOTDIR", "EFBIG"])
def test_file_system_faults_are_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    import errno

    from typer.testing import CliRunner

    from flows.cli import app
    from storage.root import DatasetRoot

    def refuse(self: DatasetRoot, *args: Any, **kwargs: Any) -> None:
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "root" / "x"))

    monkeypatch.setattr(DatasetRoot, "_acquire", refuse)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    result = CliRunner().invoke(app, ["ingest", "--manifest", str(manifest), "--root", str(tmp_path / "root")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path / "root" / "x") in lines[0], result.output
    assert "Traceback" not in result.output


def test_an_unwritable_prefect_home_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("PREFECT_HOME", str(blocker / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["ingest", "--manifest", str(blocker), "--root", str(tmp_path / "root")])
    assert result.exit_code == 1 and "PREFECT_HOME" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_a_changed_source_is_rejected_before_a_stage_reads_it(tmp_path: Path) -> None:
    import shutil

    from engine.errors import SourceChangedError
    from engine.types import Clip
    from flows.pipeline.sources import _fingerprint, source_changed_rejects, verify_source

    videos = tmp_path / "videos"
    a, b = hostile.make_video(videos / "a.mp4", seed=1), hostile.make_video(tmp_path / "b.mp4", seed=2)
    clip = Clip(clip_id="c1", video_uri=str(a.resolve()), caption="x")
    prints = {"c1": _fingerprint(clip.video_uri)}
    verify_source(clip, prints)  # unchanged
    shutil.copy(b, a)
    with pytest.raises(SourceChangedError, match="replaced"):
        verify_source(clip, prints)
    moved = tmp_path / "moved"
    videos.rename(moved)
    videos.symlink_to(moved)  # the folder swapped for a symlink
    with pytest.raises(SourceChangedError, match="symlink"):
        verify_source(clip, None)

    class Root:
        def exists(self, path: str) -> bool:
            return False

    kept, rejects = source_changed_rejects(Root(), "s", "analyze", [clip], lambda item: item.clip_id)
    assert kept == [] and [r.reason for r in rejects] == [RejectReason.SOURCE_CHANGED]


def test_the_videos_folder_is_one_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline.importing import canonical_video_root

    (tmp_path / "data" / "videos").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    spellings = ["data/videos", str(tmp_path / "data" / "videos"), "data/videos/../videos", "link/videos/",
                 f"file://{tmp_path}/data/videos"]
    assert {canonical_video_root(s) for s in spellings} == {str((tmp_path / "data" / "videos").resolve())}


def test_a_runaway_judge_reply_is_malformed_and_stored_bounded() -> None:
    import asyncio

    from agents.backends.base import ChatReply
    from agents.bench.judge import JudgeSettings, judge_description

    class Judge:
        async def complete(self, request: Any) -> ChatReply:
            return ChatReply(text="1. Subject Correspondence: 5\x1b[2J" + "z" * 3_000_000, model="m", backend="t")

    settings = JudgeSettings(model="judge", prompt=type("Prompt", (), {"text": "judge"})(), max_reasks=1)
    with text_limit(1000):
        outcome = asyncio.run(judge_description(Judge(), reference="r", prediction="p", settings=settings))
    assert outcome.scores is None and "above limits.max_text_chars" in outcome.error
    assert all(len(reply.text) <= 1000 and is_clean(reply.text) for reply in outcome.replies)


def test_read_only_commands_keep_their_exit_code_without_native_teardown(tmp_path: Path) -> None:
    # `validate` / `doctor` / `status` end with os._exit once flushed (pyarrow's pool worker is never met joinable by
    # its static destructor); their exit code and output must be those of the command.
    run = hostile.videorefer("validate", "--root", str(tmp_path), timeout=300, memory=4 << 30)
    assert (run.rc, run.hung) == (1, False) and "no exported tars" in run.out, run.err


def test_export_rejects_a_clip_whose_video_changed_after_the_stages_ran(tmp_path: Path) -> None:
    import shutil

    from flows.pipeline import layout
    from flows.pipeline.export import exported_tars
    from flows.pipeline.ingest import ingest
    from flows.pipeline.runner import run_stage
    from flows.pipeline.stages import EXPORT, SHARD_STAGES
    from storage.wds import iter_samples
    from tests.flows.conftest import make_inputs, tiny_config

    config = tiny_config(shard_size=10)
    root = tmp_path / "root"
    root.mkdir()
    ingest(root, make_inputs(root, clips=2, qa_clips=0), config)
    droot = layout.open_root(root)
    shard = layout.shards(droot)[0]
    for stage in SHARD_STAGES:
        if stage != EXPORT:
            run_stage(root, stage, shard, config)
    clips = layout.shard_clips(droot, shard)
    changed, kept = clips[0], clips[1]
    shutil.copy(kept.video_uri, changed.video_uri)  # another video's bytes under the first clip's path
    report = run_stage(root, EXPORT, shard, config)
    exported = {sample.clip_id for sample, _ in iter_samples(exported_tars(root))}
    assert changed.clip_id not in exported and kept.clip_id in exported
    assert report.rejects.get(RejectReason.SOURCE_CHANGED, 0) >= 1
    from flows.pipeline.doctor import diagnose

    found = [f for f in diagnose(root) if f.kind == "video" and f.severity == "error"]
    assert [f.where for f in found] == [f"clip {changed.clip_id}"] and "replaced" in found[0].message


def test_hostile_bench_entries_are_rejected_alone_and_hostile_files_are_one_error(tmp_path: Path) -> None:
    from agents.bench.files import read_bench_q

    entries = (b'[{"id": 1, "Question": "q", "Question": "r"}, {"id": 2, "video": "\\ud800"},'
               b' {"id": 3, "x": ' + b"[" * 80 + b"]" * 80 + b"}, {\"id\": 4}]")
    (tmp_path / "q.json").write_bytes(b"\xef\xbb\xbf" + entries)
    bench = read_bench_q(tmp_path / "q.json", tmp_path)
    assert [r.reason for r in bench.rejects] == [RejectReason.HOSTILE_STRUCTURE] * 3 + [RejectReason.MALFORMED_SAMPLE]
    for data in (b"\xff\xfe[]", b"[" * 100_000, b'[{"id": ' + b"9" * 10_000 + b"}"):
        (tmp_path / "q.json").write_bytes(data)
        with pytest.raises(ConfigError) as error:
            read_bench_q(tmp_path / "q.json", tmp_path)
        assert len(str(error.value)) < 400


def test_validate_and_doctor_flag_the_same_exported_texts(tmp_path: Path) -> None:
    import io
    import tarfile

    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import layout
    from flows.pipeline.doctor import diagnose
    from flows.pipeline.export import exported_tars
    from flows.pipeline.ingest import ingest
    from flows.pipeline.runner import run_stage
    from flows.pipeline.stages import SHARD_STAGES
    from tests.flows.conftest import make_inputs, tiny_config

    config = tiny_config(shard_size=10)
    root = tmp_path / "root"
    root.mkdir()
    ingest(root, make_inputs(root, clips=1, qa_clips=0), config)
    droot = layout.open_root(root)
    for stage in SHARD_STAGES:
        run_stage(root, stage, layout.shards(droot)[0], config)
    tar = Path(exported_tars(root)[0])
    with tarfile.open(tar) as handle:
        members = [(m, handle.extractfile(m).read()) for m in handle.getmembers()]

    def verdicts(answer: str) -> tuple[int, bool]:
        with tarfile.open(tar, "w") as handle:
            for member, data in members:
                if member.name.endswith(".json"):
                    value = json.loads(data)
                    value["samples"][0]["conversations"][-1]["value"] = answer
                    data = json.dumps(value).encode()
                    member.size = len(data)
                handle.addfile(member, io.BytesIO(data))
        validate = CliRunner().invoke(app, ["validate", "--root", str(root)])
        doctor = any(f.kind == "shard" and f.severity == "error" for f in diagnose(root))
        return validate.exit_code, doctor

    assert verdicts("A ball.") == (0, False)
    assert verdicts("q" * (config.limits.max_text_chars + 1)) == (1, True)
    assert verdicts("ok \x1b]0;title\x07 \u202e") == (1, True)
