"""Generated corpora of hostile input, one per class of issue 22, each run through the real `videorefer` commands.

Each class makes its inputs here (random and edge instances beside good ones, no binary fixtures), runs the
commands a user runs in a child process bounded in time (`timeout`) and memory (`RLIMIT_AS`), and sorts every bad
instance into one outcome: `typed` (a reject with a reason code of the taxonomy, or one `error:` line and exit 1
for a whole-file fault), `crash` (a traceback, an exit code other than 0/1, an `item_error` reject), `hang` (past
the time or memory bound) or `silent` (exit 0 with a wrong result: a bad row exported, a good row lost, validate
and doctor disagreeing, a leftover file). `python -m tests.reliability.hostile [CLASS ...]` prints one JSON line of
figures per class; `tests/reliability/test_hostile_corpus.py` asserts zero crash, hang and silent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"max_text_chars": 2000, "max_video_bytes": 2_000_000, "max_decoded_pixels": 4_000_000}
TINY = {"base_profile": "offline", "shard_size": 50, "concurrency": 4, "max_reject_fraction": 1.0,
        "sampling": {"num_frames": 4, "mask_frames": 4, "image_size": 48, "patch_size": 8}, "limits": LIMITS}
W, H, FRAMES, FPS = 96, 72, 12, 12.0
MEMORY_BYTES = 6 << 30  # address space of one command (importing torch reserves much that it never touches)
TYPED_ERRORS = ("error:",)


@dataclasses.dataclass
class Run:
    """One command: exit code, output, seconds, and whether it passed its time or memory bound."""

    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    hung: bool

    @property
    def crashed(self) -> bool:
        return not self.hung and (self.rc not in (0, 1) or "Traceback (most recent call last)" in self.err)

    @property
    def one_error_line(self) -> bool:
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        return self.rc == 1 and len(lines) == 1 and not self.crashed


def videorefer(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
               memory: int = MEMORY_BYTES) -> Run:
    """Run `videorefer ARGS` in a child bounded by `timeout` seconds and `memory` bytes of address space."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    command = [sys.executable, "-c", "from flows.cli import main; main()", *args]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="replace", preexec_fn=limits)
    try:
        out, err = child.communicate(timeout=timeout)
        hung = "MemoryError" in err
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        hung = True
    return Run(list(args), child.returncode, out, err, time.perf_counter() - started, hung)


@dataclasses.dataclass
class Figures:
    """Outcomes of one class's bad instances (and good instances lost)."""

    name: str
    counts: Counter = dataclasses.field(default_factory=Counter)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, outcome: str, note: str = "") -> None:
        self.counts[outcome] += 1
        if outcome != "typed" and note:
            self.notes.append(f"{outcome}: {note}"[:300])

    def run_failed(self, run: Run, instances: int, what: str) -> bool:
        """Count every instance of a command that crashed or hung; True when it did."""
        if run.hung or run.crashed:
            outcome = "hang" if run.hung else "crash"
            for _ in range(instances):
                self.add(outcome, f"{what}: rc {run.rc}: {run.err.strip()[-300:]}")
            return True
        return False

    def as_json(self) -> dict[str, Any]:
        return {"class": self.name, **{k: self.counts.get(k, 0) for k in ("typed", "crash", "hang", "silent")},
                "notes": self.notes[:8]}


def write_config(path: Path, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **extra}))
    return path


def make_video(path: Path, seed: int, **size: Any) -> Path:
    from engine.synthetic import make_clip

    make_clip(path, seed=seed, **{"num_frames": FRAMES, "width": W, "height": H, "fps": FPS, **size})
    return path


def _reject_messages(root: Path, stage: str = "ingest") -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    folder = root / "rejects" / stage
    out = []
    for file in sorted(folder.glob("*.parquet")) if folder.is_dir() else ():
        out += [(row["reason"], row["message"]) for row in pq.read_table(file).to_pylist()]
    return out


def _clips(root: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return [row for file in sorted((root / "sources").glob("*.parquet")) for row in pq.read_table(file).to_pylist()]


UNTYPED = {"item_error", "backend_error"}


# ------------------------------------------------------------------------------------------ 1. parsers


def hostile_rows(rng: random.Random, video: str) -> list[tuple[str, Any]]:
    """(kind, row) of hostile manifest rows as Python values; rows that need raw bytes are `bytes`."""
    rows: list[tuple[str, Any]] = [
        ("duplicate keys", b'{"video": "%s", "caption": "a", "caption": "b"}' % video.encode()),
        ("invalid UTF-8 in the caption", b'{"video": "%s", "caption": "bad \xff\xfe bytes"}' % video.encode()),
        ("lone surrogate in the caption", b'{"video": "%s", "caption": "x \\ud800 y"}' % video.encode()),
        ("lone surrogate in the video path", b'{"video": "a\\udc80.mp4", "caption": "c"}'),
        ("NUL in the video path", b'{"video": "a\\u0000.mp4", "caption": "c"}'),
        ("nesting 100 deep", b'{"video": "%s", "caption": "c", "objects": %s}' % (video.encode(),
                                                                                    b"[" * 100 + b"]" * 100)),
        ("nesting 50000 deep", b'{"video": "%s", "caption": "c", "x": %s}' % (video.encode(),
                                                                              b"[" * 50000 + b"]" * 50000)),
        ("a 20000-digit start", b'{"video": "%s", "caption": "c", "start": %s}' % (video.encode(), b"9" * 20000)),
        ("a 400-digit end", b'{"video": "%s", "caption": "c", "end": 1%s}' % (video.encode(), b"0" * 400)),
        ("NaN end", b'{"video": "%s", "caption": "c", "end": NaN}' % video.encode()),
        ("a 3 MB caption", json.dumps({"video": video, "caption": "w" * 3_000_000}).encode()),
        ("a 200 kB video path", json.dumps({"video": "v" * 200_000 + ".mp4", "caption": "c"}).encode()),
        ("a 20000-digit frame key", json.dumps({"video": video, "caption": "c", "objects": [
            {"name": "n", "masks": {"9" * 20000: {"size": [H, W], "counts": "0"}}}]}).encode()),
        ("objects a string of garbage", json.dumps({"video": video, "caption": "c", "objects": "[[[{"}).encode()),
        ("objects with a list name", json.dumps({"video": video, "caption": "c", "objects": [
            {"name": ["x"], "masks": {"0": {"size": [H, W], "counts": "0"}}}]}).encode()),
        ("video a mapping", json.dumps({"video": {"path": video}, "caption": "c"}).encode()),
        ("caption a list", json.dumps({"video": video, "caption": ["c"]}).encode()),
        ("row a list", b"[1, 2, 3]"),
        ("row not JSON", b"{not json"),
        ("row a bare number", b"1e999999"),
    ]
    atoms: list[Any] = [None, "", " ", "\x00", "\ud800", "\u202e", "x" * 5000, 10**30, -1, float("nan"), [], {},
                        [[[[[]]]]], {"a": {"b": {"c": {}}}}, True, "../../etc/passwd", "/dev/zero", "NaN", "1e309"]
    keys = ["video", "caption", "start", "end", "objects", "source_id"]
    for number in range(20):  # random: a good row with one to three fields made hostile
        row: dict[str, Any] = {"video": video, "caption": f"random row {number}", "end": 0.5}
        for _ in range(rng.randint(1, 3)):
            row[rng.choice(keys)] = rng.choice(atoms)
        rows.append((f"random {number}", json.dumps(row).encode("utf-8", "surrogatepass")))
    return rows


def class_parsers(work: Path) -> Figures:
    """Manifests in JSONL, CSV, JSON and Parquet with hostile rows beside good ones; whole files that cannot be
    parsed; 700K JSON with hostile items; hostile YAML configs."""
    figures = Figures("parsers")
    rng = random.Random(22)
    videos = work / "videos"
    good = [make_video(videos / f"good{n}.mp4", seed=n) for n in range(2)]
    config = write_config(work / "tiny.yaml")

    def ingest_and_score(manifest: Path, root: Path, good_rows: int, edge: list[int], rows: int, what: str) -> None:
        """Rows 0..good_rows-1 are good, `edge` must each be rejected (by row number), the others (random) may go
        either way; every row must be accounted for."""
        run = videorefer("ingest", "--manifest", str(manifest), "--root", str(root), "--config", str(config),
                         timeout=600)
        bad_rows = rows - good_rows
        if figures.run_failed(run, bad_rows, what):
            return
        if run.rc != 0:
            for _ in range(bad_rows):
                figures.add("silent", f"{what}: exit {run.rc} lost the good rows: {run.err.strip()[-200:]}")
            return
        rejects = _reject_messages(root)
        clips = _clips(root)
        named = {int(m.group(1)): reason for reason, message in rejects
                 if (m := re.match(r"manifest row (\d+)", message))}
        for number in range(good_rows, rows):
            if named.get(number) in UNTYPED:
                figures.add("crash", f"{what} row {number}: untyped reject {named[number]}")
            elif number in edge and number not in named:
                figures.add("silent", f"{what} row {number}: not rejected")
            else:
                figures.add("typed")
        for reason, message in rejects:
            if reason in UNTYPED and not re.match(r"manifest row \d+", message):
                figures.add("crash", f"{what}: untyped reject {message}")
        if len(clips) + len(rejects) != rows:
            figures.add("silent", f"{what}: {rows} rows, {len(clips)} clips + {len(rejects)} rejects")
        if len(clips) < good_rows:
            figures.add("silent", f"{what}: good rows lost ({len(clips)} clips)")

    # JSONL: a BOM, then good rows, then the hostile rows (each row's own video name keeps rows distinct).
    lines = [b"\xef\xbb\xbf" + json.dumps({"video": f"videos/{good[0].name}", "caption": "a red ball"}).encode(),
             json.dumps({"video": f"videos/{good[1].name}", "caption": "a \x1b[31mblue\u202e box\x00"}).encode()]
    bad = hostile_rows(rng, f"videos/{good[0].name}")
    # rows naming the good video with another span: distinct clips unless rejected
    lines += [line for _, line in bad]
    manifest = work / "jsonl" / "manifest.jsonl"
    manifest.parent.mkdir()
    shutil.copytree(videos, manifest.parent / "videos")
    manifest.write_bytes(b"\n".join(lines) + b"\n")
    edge = [2 + n for n, (kind, _) in enumerate(bad) if not kind.startswith("random")]
    ingest_and_score(manifest, work / "jsonl" / "root", 2, edge, 2 + len(bad), "jsonl")
    clips = _clips(work / "jsonl" / "root")
    captions = [c["caption"] for c in clips]
    if any(not _clean(c) for c in captions):
        figures.add("silent", "jsonl: a caption with control characters was stored")

    # CSV: a BOM, a field above the csv module's limit, bytes that are not UTF-8, too many fields.
    folder = work / "csv"
    folder.mkdir()
    shutil.copytree(videos, folder / "videos")
    csv_lines = [b"\xef\xbb\xbfvideo,caption,end",
                 f"videos/{good[0].name},a red ball,".encode(),
                 f"videos/{good[1].name},\"a blue, quoted\nbox\",".encode(),
                 f"videos/{good[0].name},\"{'z' * 200_000}\",0.5".encode(),
                 f"videos/{good[0].name},bad \xff bytes,0.6".encode("latin-1"),
                 f"videos/{good[0].name},too,0.7,many,fields".encode(),
                 f"videos/{good[0].name},c,{'9' * 20000}".encode(),
                 b"\x00\x00,\x00,0.8"]
    (folder / "manifest.csv").write_bytes(b"\n".join(csv_lines) + b"\n")
    ingest_and_score(folder / "manifest.csv", folder / "root", 2, [2, 3, 4, 5], 7, "csv")

    # JSON list: duplicate keys and surrogates inside items, huge numbers.
    folder = work / "json"
    folder.mkdir()
    shutil.copytree(videos, folder / "videos")
    items = (b'[{"video": "videos/%s", "caption": "a red ball"}, {"video": "videos/%s", "caption": "b"},'
             b'{"video": "videos/%s", "caption": "dup", "caption": "dup"},'
             b'{"video": "videos/%s", "caption": "\\udfff"},'
             b'{"video": "videos/%s", "caption": "c", "start": %s}]') % (
        good[0].name.encode(), good[1].name.encode(), good[0].name.encode(), good[0].name.encode(),
        good[0].name.encode(), b"7" * 30000)
    (folder / "manifest.json").write_bytes(b"\xef\xbb\xbf" + items)
    ingest_and_score(folder / "manifest.json", folder / "root", 2, [2, 3, 4], 5, "json")

    # Parquet: columns of other types than text.
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "parquet"
    folder.mkdir()
    shutil.copytree(videos, folder / "videos")
    table = pa.table({"video": [f"videos/{good[0].name}", f"videos/{good[1].name}", f"videos/{good[0].name}",
                                f"videos/{good[0].name}", "x" * 300_000],
                      "caption": ["a red ball", "a blue box", "y" * 100_000, "z\x00\x1b", "c"],
                      "end": [None, None, 0.5, 0.6, 0.7],
                      "objects": [None, None, None, "[" * 5000, None]})
    pq.write_table(table, folder / "manifest.parquet")
    ingest_and_score(folder / "manifest.parquet", folder / "root", 2, [2, 4], 5, "parquet")

    # Whole files that cannot be parsed: one `error:` line, exit 1, quickly.
    whole = {"manifest.json": b"[" * 100_000, "bad.parquet": b"PAR1 not parquet PAR1",
             "empty.json": b"\xff\xfe\x00\x00", "list.json": b'{"video": "x"}'}
    for name, data in whole.items():
        (work / name).write_bytes(data)
        run = videorefer("ingest", "--manifest", str(work / name), "--root", str(work / f"root-{name}"),
                         "--config", str(config), timeout=300)
        if not figures.run_failed(run, 1, name):
            figures.add("typed" if run.one_error_line else "silent", f"{name}: rc {run.rc} {run.err[-200:]}")

    # YAML configs: each a one-line error, quickly, in bounded memory.
    bomb = "".join(f"{chr(97 + n)}: &{chr(97 + n)} [{', '.join([f'*{chr(96 + n)}'] * 9) if n else '1, 1'}]\n"
                   for n in range(12))
    configs = {"alias bomb": bomb, "duplicate keys": "shard_size: 5\nshard_size: 6\n",
               "deep nesting": "x: " + "[" * 30000 + "]" * 30000 + "\n", "huge int": f"shard_size: {'9' * 9000}\n",
               "recursive alias": "a: &a [*a]\n", "python tag": "a: !!python/object/apply:os.system ['true']\n",
               "NUL": "shard_size: 5\x00\n", "not a mapping": "- a\n- b\n", "binary": "\xff\xfe\x00"}
    for kind, text in configs.items():
        path = work / f"config-{len(kind)}-{abs(hash(kind)) % 1000}.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape") if kind != "binary" else b"\xff\xfe\x00")
        run = videorefer("status", "--root", str(work / "jsonl" / "root"), "--config", str(path), timeout=120,
                         memory=2 << 30)
        if not figures.run_failed(run, 1, f"config {kind}"):
            figures.add("typed" if run.one_error_line else "silent", f"config {kind}: rc {run.rc} {run.err[-200:]}")

    # 700K JSON: hostile items beside good ones.
    from engine.masks import encode_rle

    mask = np.zeros((H, W), bool)
    mask[10:40, 20:60] = True
    rle = encode_rle(mask)

    def item(answer: str = "A ball rolls.", **extra: Any) -> dict[str, Any]:
        return {"video": good[0].name, "conversations": [
            {"from": "human", "value": "<video>\nPlease describe in detail the object <region> in the video."},
            {"from": "gpt", "value": answer}], "annotation": [{"3": {"segmentation": rle}}], **extra}

    good_items = [json.dumps(item()).encode(), json.dumps(item("It is \x1b[1mred\u202e.")).encode()]
    bad_items = [b'{"video": "%s", "video": "x", "conversations": [], "annotation": []}' % good[0].name.encode(),
                 json.dumps(item("\ud800")).encode("utf-8", "surrogatepass").replace(b"\xed\xa0\x80", b"\\ud800"),
                 json.dumps(item("z" * 50_000)).encode(),
                 json.dumps(item(height=10**40, width=5)).encode(),
                 json.dumps({**item(), "annotation": [{"9" * 5000: {"segmentation": rle}}]}).encode(),
                 json.dumps({**item(), "extra": json.loads("[" * 70 + "]" * 70)}).encode(),
                 b'{"video": 5, "conversations": "x", "annotation": 7}', b"[]", b"null"]
    source = work / "700k.json"
    source.write_bytes(b"\xef\xbb\xbf[" + b",".join(good_items + bad_items) + b"]")
    root = work / "root-700k"
    run = videorefer("import-700k", "--json", str(source), "--videos", str(videos), "--root", str(root),
                     "--config", str(config), timeout=600)
    if not figures.run_failed(run, len(bad_items), "import-700k"):
        rejects = _reject_messages(root, "import_700k")
        typed = [r for r, _ in rejects if r not in UNTYPED]
        for _ in range(min(len(bad_items), len(typed))):
            figures.add("typed")
        for reason, message in rejects:
            if reason in UNTYPED:
                figures.add("crash", f"700k: {reason}: {message}")
        for _ in range(len(bad_items) - len(rejects)):
            figures.add("silent", f"700k: rc {run.rc}: a bad item was imported or lost {run.err[-200:]}")
    return figures


_UNCLEAN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _clean(text: str) -> bool:
    """No control characters, bidi controls or lone surrogates (written out here: the corpus also measures older
    code, which has no `engine.parsing`)."""
    return not _UNCLEAN.search(text)


# ------------------------------------------------------------------------------------------ 2. texts


HOSTILE_TEXTS = {
    "normal": "a red ball",
    "control characters": "a red\x1b[31m ball\u202e with\x00 NUL\x07",
    "10 MB reply": "b" * 10_000_000,
    "field above the limit": "c" * 2500,
    "lone surrogate": "a ball \ud800 here",
}


def _reply_for_schema(schema: dict[str, Any], text: str) -> Any:
    kind = schema.get("type", "object")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties", {})
        return {name: (True if name == "same_object" else False if name == "is_static" else
                       ["<object0>"] if name == "objects" else [] if name == "options" else
                       _reply_for_schema(sub, text)) for name, sub in props.items()}
    if kind == "array":
        return [_reply_for_schema(schema.get("items", {"type": "string"}), text)]
    if kind == "string":
        return text
    if kind == "boolean":
        return False
    return 0


def class_texts(work: Path) -> Figures:
    """Model replies through an OpenAI-compatible stub server: control characters, lone surrogates, a 10 MB reply
    and a text above `limits.max_text_chars`, beside normal replies; captions with control characters. The build
    must export only clean texts within the limit, and `validate` and `doctor` must agree on the export."""
    from agents.backends.stub_server import StubOpenAIServer

    figures = Figures("texts")
    videos = work / "videos"
    rows = []
    for number in range(6):
        video = make_video(videos / f"clip{number}.mp4", seed=40 + number)
        for sidecar in videos.glob(f"clip{number}*.json"):
            sidecar.unlink()  # no ground truth: the fake grounder boxes any noun
        rows.append({"video": f"videos/{video.name}", "caption": f"a red ball {number} rolls\x1b[2J\u202e left"})
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    modes = list(HOSTILE_TEXTS)

    def responder(request: dict[str, Any]) -> str:
        schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
        digest = sum(json.dumps(request.get("messages", ""), sort_keys=True).encode()) % len(modes)
        text = HOSTILE_TEXTS[modes[digest]]
        return json.dumps(_reply_for_schema(schema, text), ensure_ascii=False).replace("\\ud800", "\ud800")

    with StubOpenAIServer(responder=responder) as server:
        chat = {"kind": "openai", "base_url": server.base_url, "model": "stub", "api_key_env": "HOSTILE_KEY",
                "max_retries": 1, "timeout_s": 60}
        agents = {name: chat for name in ("analyzer", "annotator", "region_captioner", "judge", "refiner")}
        config = write_config(work / "openai.yaml", agents=agents)
        root = work / "root"
        run = videorefer("build", "--root", str(root), "--manifest", str(manifest), "--config", str(config),
                         env={"HOSTILE_KEY": "k"}, timeout=900)
        requests = server.request_count
    if figures.run_failed(run, len(modes), "build"):
        return figures
    if run.rc != 0:
        figures.add("silent", f"build failed: {run.err[-300:]}")
        return figures
    from storage.wds import iter_samples

    texts = [turn.value for sample, _ in iter_samples(sorted(str(p) for p in (root / "export" / "wds").glob("*.tar")))
             for turn in sample.conversations]
    stored = [str(c["caption"]) for c in _clips(root)]
    bad = [t for t in texts + stored if len(t) > LIMITS["max_text_chars"] or not _clean(t)]
    reasons = Counter(reason for stage in ("analyze", "annotate", "review", "refine", "short_captions",
                                           "generate_qa", "export") for reason, _ in _reject_messages(root, stage))
    figures.notes.append(f"{requests} model requests, {len(texts)} exported texts, rejects {dict(reasons)}")
    for text in bad:
        figures.add("silent", f"exported text of {len(text)} characters, clean: {_clean(text)}")
    if not texts:
        figures.add("silent", "nothing exported: the normal replies were lost")
    for reason in ("text_too_long",):
        figures.add("typed" if reasons.get(reason) else "silent", f"no {reason} reject")
    figures.add("typed" if not bad else "silent")  # control characters cleaned
    validate = videorefer("validate", "--root", str(root), timeout=300)
    doctor = videorefer("doctor", "--root", str(root), timeout=300)
    for name, check in (("validate", validate), ("doctor", doctor)):
        figures.run_failed(check, 1, name)
    agree = (validate.rc == 0) == (doctor.rc == 0)
    figures.add("typed" if agree else "silent", f"validate rc {validate.rc}, doctor rc {doctor.rc}: "
                f"{validate.out[-200:]} | {doctor.out[-300:]}")
    return figures


def class_validate_agreement(work: Path) -> Figures:
    """Exported tars edited the way an older version or a hand would leave them (a 10 MB caption, control
    characters, an extra member): `validate` and `doctor` must both flag each, never one alone."""
    from storage.wds import iter_samples

    figures = Figures("validate_doctor")
    root = work / "demo"
    run = videorefer("demo", "--root", str(root), "--clips", "2", timeout=900)
    if figures.run_failed(run, 3, "demo") or run.rc != 0:
        return figures
    import io
    import tarfile

    tar = sorted((root / "export" / "wds").glob("*.tar"))[0]
    members = []
    with tarfile.open(tar) as handle:
        members = [(m, handle.extractfile(m).read()) for m in handle.getmembers()]

    def rewrite(edit: Callable[[dict[str, Any]], None], extra: bool = False) -> None:
        with tarfile.open(tar, "w") as handle:
            done = False
            for member, data in members:
                if member.name.endswith(".json") and not done:
                    value = json.loads(data)
                    edit(value)
                    data = json.dumps(value).encode()
                    member.size = len(data)
                    done = True
                handle.addfile(member, io.BytesIO(data))
            if extra:
                info = tarfile.TarInfo("x.pyd")
                info.size = 3
                handle.addfile(info, io.BytesIO(b"abc"))

    def long_caption(value: dict[str, Any]) -> None:
        value["samples"][0]["conversations"][-1]["value"] = "q" * 10_000_000

    def control(value: dict[str, Any]) -> None:
        value["samples"][0]["conversations"][-1]["value"] = "ok \x1b]0;pwned\x07 \u202e"

    list(iter_samples(str(tar)))  # readable before
    for name, edit, extra in (("10 MB caption", long_caption, False), ("control characters", control, False),
                              ("extra member", lambda v: None, True)):
        rewrite(edit, extra)
        validate = videorefer("validate", "--root", str(root), timeout=300)
        doctor = videorefer("doctor", "--root", str(root), timeout=300)
        if figures.run_failed(validate, 1, f"validate {name}") or figures.run_failed(doctor, 1, f"doctor {name}"):
            continue
        both = validate.rc == 1 and doctor.rc == 1
        figures.add("typed" if both else "silent", f"{name}: validate rc {validate.rc}, doctor rc {doctor.rc}")
    return figures


# ------------------------------------------------------------------------------------------ 3. files that change


def class_source_changed(work: Path) -> Figures:
    """Videos replaced, or their folder swapped for a symlink, between ingest and build: each such clip must be a
    `source_changed` reject, never exported with another video's frames; the others are exported."""
    figures = Figures("source_changed")
    videos = work / "data" / "videos"
    for number in range(5):
        make_video(videos / f"v{number}.mp4", seed=60 + number)
    frames = work / "data" / "frames"
    frames.mkdir(parents=True)
    from PIL import Image

    for index in range(6):
        Image.fromarray(np.full((H, W, 3), 20 * index, np.uint8)).save(frames / f"{index:05d}.png")
    rows = [{"video": f"videos/v{n}.mp4", "caption": f"a red ball rolls in clip {n}"} for n in range(5)]
    rows.append({"video": "frames", "caption": "a grey ball in a frame folder"})
    rows.append({"video": "videos/v4.mp4", "caption": "a blue ball, same video, own id", "source_id": "panda:v4"})
    manifest = work / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(work / "tiny.yaml")
    root = work / "root"
    run = videorefer("ingest", "--manifest", str(manifest), "--root", str(root), "--config", str(config))
    if figures.run_failed(run, 4, "ingest") or run.rc != 0:
        return figures
    other = make_video(work / "other.mp4", seed=99)
    shutil.copy(other, videos / "v0.mp4")  # replaced by another video of the same size
    (videos / "v1.mp4").write_bytes((videos / "v1.mp4").read_bytes()[:-500] + b"\0" * 500)  # edited in place
    Image.fromarray(np.full((H, W, 3), 255, np.uint8)).save(frames / "00002.png")  # a frame replaced
    elsewhere = work / "elsewhere"
    make_video(elsewhere / "v4.mp4", seed=98)
    moved = work / "data" / "videos-old"
    videos.rename(moved)
    videos.mkdir()
    for number in range(4):
        os.link(moved / f"v{number}.mp4", videos / f"v{number}.mp4")
    os.symlink(elsewhere / "v4.mp4", videos / "v4.mp4")  # a symlink swapped in for the file
    changed = {"a red ball rolls in clip 0", "a red ball rolls in clip 1", "a grey ball in a frame folder",
               "a red ball rolls in clip 4", "a blue ball, same video, own id"}
    run = videorefer("build", "--root", str(root), "--config", str(config))
    if figures.run_failed(run, len(changed), "build") or run.rc != 0:
        if run.rc == 1:
            figures.add("silent", f"build failed: {run.err[-300:]}")
        return figures
    from storage.wds import iter_samples

    exported: set[str] = set()
    for sample, _ in iter_samples(sorted(str(p) for p in (root / "export" / "wds").glob("*.tar"))):
        exported.add(sample.clip_id)
    clips = {c["clip_id"]: c["caption"] for c in _clips(root)}
    import pyarrow.parquet as pq

    rejected = {row["clip_id"] for folder in (root / "rejects").iterdir() for file in folder.glob("*.parquet")
                for row in pq.read_table(file).to_pylist() if row["reason"] == "source_changed"}
    for clip_id, caption in clips.items():
        if caption in changed:
            if clip_id in exported:
                figures.add("silent", f"{caption} exported after its video changed")
            else:
                figures.add("typed" if clip_id in rejected else "silent", f"{caption}: lost without its reason")
        elif clip_id not in exported:
            figures.add("silent", f"{caption}: an unchanged clip was not exported")
    figures.notes.append(f"{len(rejected)} clips rejected as source_changed")
    return figures


# ------------------------------------------------------------------------------------------ 4. file system faults


def class_filesystem(work: Path) -> Figures:
    """A full disk (the file size limit of the process), an unwritable PREFECT_HOME, a root below a file, and
    temp files of interrupted writes: one `error:` line naming the path, nothing half-written visible, the next
    writer removes leftovers."""
    figures = Figures("filesystem")
    videos = work / "videos"
    make_video(videos / "a.mp4", seed=1)
    manifest = work / "manifest.jsonl"
    manifest.write_text(json.dumps({"video": "videos/a.mp4", "caption": "a ball"}) + "\n")
    config = write_config(work / "tiny.yaml")

    def fsize(limit: int) -> Callable[[], None]:
        def apply() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
        return apply

    for limit in (0, 3000, 20000):  # the disk "fills" at once, during ingest, during the build
        root = work / f"full-{limit}"
        command = [sys.executable, "-c", "from flows.cli import main; main()", "build", "--root", str(root),
                   "--manifest", str(manifest), "--config", str(config)]
        child = subprocess.run(command, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=900,
                               preexec_fn=fsize(limit))
        run = Run(command, child.returncode, child.stdout, child.stderr, 0.0, False)
        if figures.run_failed(run, 1, f"full disk at {limit} bytes"):
            continue
        partial = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size == limit and limit]
        # The root's own writes fail with "cannot write <path>"; where the local API's database fills first, its
        # line names PREFECT_HOME instead.
        ok = run.one_error_line and ("cannot write" in run.err or "PREFECT_HOME" in run.err) and not partial
        figures.add("typed" if ok else "silent", f"full disk at {limit}: rc {run.rc} {run.err[-300:]} {partial[:2]}")
    for name, home in (("PREFECT_HOME below a file", str(manifest / "home")), ("PREFECT_HOME in /proc", "/proc/x")):
        env = {"PREFECT_HOME": home, "PREFECT_API_URL": ""}
        run = videorefer("ingest", "--manifest", str(manifest), "--root", str(work / "r-home"), "--config",
                         str(config), env=env, timeout=300)
        if not figures.run_failed(run, 1, name):
            ok = run.one_error_line and "PREFECT_HOME" in run.err
            figures.add("typed" if ok else "silent", f"{name}: rc {run.rc} {run.err[-300:]}")
    run = videorefer("ingest", "--manifest", str(manifest), "--root", str(manifest / "root"), "--config",
                     str(config), timeout=300)
    if not figures.run_failed(run, 1, "root below a file"):
        figures.add("typed" if run.one_error_line else "silent", f"root below a file: rc {run.rc} {run.err[-300:]}")
    # Temp files of interrupted writes, every name our writers use, are removed by the next writer.
    root = work / "root"
    run = videorefer("ingest", "--manifest", str(manifest), "--root", str(root), "--config", str(config))
    if figures.run_failed(run, 1, "ingest") or run.rc != 0:
        return figures
    leftovers = [root / "export" / "wds" / "train-000000.tar.tmp-0123456789ab",
                 root / "stages" / "analyze" / ".shard-000000.parquet.tmp-0123456789ab",
                 root / "videos" / ".a.mp4.4242.tmp", root / "manifest.jsonl.tmp",
                 root / ".videorefer.lock.stale-0123456789ab", root / "export" / "json" / ".train.json.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    run = videorefer("build", "--root", str(root), "--config", str(config), timeout=900)
    if not figures.run_failed(run, len(leftovers), "build after an interrupted write"):
        for path in leftovers:
            figures.add("silent" if path.exists() else "typed", f"{path.name} survived the next writer")
    return figures


# ------------------------------------------------------------------------------------------ 5. ids and spelling


def class_ids(work: Path) -> Figures:
    """`import-700k` and `ingest` with the same inputs named relative, absolute, through `..` and through a
    symlinked folder: the same clip ids and byte-identical tars."""
    from engine.masks import encode_rle

    figures = Figures("ids")
    videos = work / "data" / "videos"
    make_video(videos / "a.mp4", seed=3)
    (work / "link").symlink_to(work / "data")
    mask = np.zeros((H, W), bool)
    mask[5:30, 5:40] = True
    item = {"video": "a.mp4", "conversations": [
        {"from": "human", "value": "<video>\nPlease describe in detail the object <region> in the video."},
        {"from": "gpt", "value": "A ball."}], "annotation": [{"2": {"segmentation": encode_rle(mask)}}]}
    source = work / "700k.json"
    source.write_text(json.dumps([item]))
    config = write_config(work / "tiny.yaml")
    spellings = {"absolute": str(videos), "relative": os.path.relpath(videos, REPO),
                 "dotdot": str(videos / ".." / "videos"), "symlink": str(work / "link" / "videos")}
    tars: dict[str, bytes] = {}
    for name, spelled in spellings.items():
        root = work / f"root-{name}"
        run = videorefer("import-700k", "--json", str(source), "--videos", spelled, "--root", str(root),
                         "--config", str(config))
        if figures.run_failed(run, 1, name) or run.rc != 0:
            continue
        found = sorted((root / "export" / "wds").glob("*.tar"))
        tars[name] = b"".join(p.read_bytes() for p in found)
    reference = tars.get("absolute")
    for name, data in tars.items():
        if name != "absolute":
            figures.add("typed" if data == reference and data else "silent", f"{name} spelling: other tars")
    return figures


# ------------------------------------------------------------------------------------------ 6. lying headers


def lying_videos(folder: Path) -> dict[str, Path]:
    """Copies of a good mp4 whose header lies: time scale 0 / 1 / 2^32-1, a frame duration of 1 tick or 0, a
    frame count of 2^31-1, random bytes in the `mdhd` box."""
    good = make_video(folder / "good.mp4", seed=5)
    data = good.read_bytes()

    def patched(name: str, box: bytes, offset: int, value: int) -> Path:
        buffer = bytearray(data)
        struct.pack_into(">I", buffer, data.index(box) + offset, value)
        path = folder / f"{name}.mp4"
        path.write_bytes(bytes(buffer))
        return path

    out = {"time scale 0": patched("ts0", b"mdhd", 16, 0), "time scale 1": patched("ts1", b"mdhd", 16, 1),
           "time scale 2^32-1": patched("tsmax", b"mdhd", 16, 0xFFFFFFFF),
           "frame duration 1 tick": patched("delta1", b"stts", 16, 1),
           "frame count 2^31-1": patched("count", b"stts", 12, 0x7FFFFFFF)}
    rng = random.Random(6)
    for number in range(4):
        buffer = bytearray(data)
        start = data.index(b"mdhd") + 12
        for k in range(12):
            buffer[start + k] = rng.randrange(256)
        path = folder / f"random{number}.mp4"
        path.write_bytes(bytes(buffer))
        out[f"random mdhd bytes {number}"] = path
    return out


def class_headers(work: Path) -> Figures:
    """Videos whose headers lie go through ingest: each is `bad_video` (or read faithfully), never stored with an
    absurd rate; the good video beside them is ingested."""
    figures = Figures("headers")
    videos = lying_videos(work / "videos")
    rows = [{"video": f"videos/{path.name}", "caption": name} for name, path in videos.items()]
    rows.insert(0, {"video": "videos/good.mp4", "caption": "good"})
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(work / "tiny.yaml")
    root = work / "root"
    run = videorefer("ingest", "--manifest", str(manifest), "--root", str(root), "--config", str(config))
    if figures.run_failed(run, len(videos), "ingest"):
        return figures
    clips = {c["caption"]: c for c in _clips(root)}
    rejects = _reject_messages(root)
    for name in videos:
        clip = clips.get(name)
        if clip is None:
            reason = next((r for r, m in rejects if f"/{videos[name].name}" in m), None)
            figures.add("crash" if reason in UNTYPED else "typed" if reason else "silent", f"{name}: {reason}")
        elif not 0.1 <= clip["fps"] <= 1000 or (clip["fps"], clip["num_frames"]) != (FPS, FRAMES):
            figures.add("silent", f"{name}: stored with {clip['fps']} fps, {clip['num_frames']} frames")
        else:
            figures.add("typed")  # the lie did not matter: read faithfully
    if "good" not in clips:
        figures.add("silent", "the good video was lost")
    return figures


# ---------------------------------------------------------------------------------- 7. backends that cannot load


def class_backends(work: Path) -> Figures:
    """A segmenter whose package is missing, whose package fails to import, or whose weights are missing: the
    build stops at once with one `error:` line; no per-item `backend_error` rejects, no export."""
    figures = Figures("backends")
    videos = work / "videos"
    make_video(videos / "a.mp4", seed=1)
    make_video(videos / "b.mp4", seed=2)
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"video": f"videos/{n}.mp4", "caption": "a red ball rolls"}) + "\n"
                                for n in "ab"))
    blocked = "transformers.models.sam2_video"  # what the sam2 segmenter imports to load its model

    def refusing(folder: Path, error: str) -> str:
        """A folder whose sitecustomize makes importing the SAM 2 model raise `error` (missing, or broken inside)."""
        folder.mkdir(parents=True)
        (folder / "sitecustomize.py").write_text(
            "import sys\nclass _No:\n    def find_spec(self, name, path=None, target=None):\n"
            f"        if name == {blocked!r}:\n            raise {error}\n        return None\n"
            "sys.meta_path.insert(0, _No())\n")
        return str(folder)

    missing = refusing(work / "missing", f"ModuleNotFoundError(\"No module named {blocked!r}\", name={blocked!r})")
    broken = refusing(work / "broken", "ImportError(\"cannot import name '_C' from partially initialized module\")")
    cases = {
        "package missing": ({"kind": "sam2", "random_weights": True}, {"PYTHONPATH": missing}),
        "import error inside": ({"kind": "sam2", "random_weights": True}, {"PYTHONPATH": broken}),
        "weights missing": ({"kind": "sam2", "model": str(work / "nowhere" / "sam2.1-hiera-tiny")}, {}),
        "grounder weights missing": (None, {}),
    }
    for name, (segmenter, env) in cases.items():
        agents = {"segmenter": segmenter} if segmenter else {
            "grounder": {"kind": "grounding_dino", "model": str(work / "no-such-model")}}
        config = write_config(work / f"{name.replace(' ', '-')}.yaml", agents=agents)
        root = work / f"root-{name.replace(' ', '-')}"
        run = videorefer("build", "--root", str(root), "--manifest", str(manifest), "--config", str(config),
                         env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))},
                         timeout=900)
        if figures.run_failed(run, 1, name):
            continue
        per_item = [m for stage in ("segment", "analyze", "short_captions") for r, m in _reject_messages(root, stage)
                    if r == "backend_error"]
        exported = list((root / "export" / "wds").glob("*.tar"))
        ok = run.one_error_line and not per_item and not exported
        figures.add("typed" if ok else "silent", f"{name}: rc {run.rc}, {len(per_item)} backend_error rejects, "
                    f"{len(exported)} tars: {run.err.strip()[-300:]}")
    return figures


# ------------------------------------------------------------------------------------------ 8. exit


def class_exit(work: Path, runs: int = 12) -> Figures:
    """`validate` and `doctor` run again and again on a built root: every run exits 0 (no abort at exit)."""
    figures = Figures("exit")
    root = work / "demo"
    run = videorefer("demo", "--root", str(root), "--clips", "2", timeout=900)
    if figures.run_failed(run, 1, "demo") or run.rc != 0:
        return figures
    for number in range(runs):
        command = ("validate", "doctor")[number % 2]
        check = videorefer(command, "--root", str(root), timeout=300)
        if not figures.run_failed(check, 1, f"{command} run {number}"):
            figures.add("typed" if check.rc == 0 else "silent", f"{command}: rc {check.rc} {check.out[-200:]}")
    return figures


# ------------------------------------------------------------------------------------------ main

CLASSES: dict[str, Callable[[Path], Figures]] = {
    "parsers": class_parsers, "texts": class_texts, "validate_doctor": class_validate_agreement,
    "source_changed": class_source_changed, "filesystem": class_filesystem, "ids": class_ids,
    "headers": class_headers, "backends": class_backends, "exit": class_exit,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classes", nargs="*", default=list(CLASSES))
    args = parser.parse_args(argv)
    for name in args.classes:
        with tempfile.TemporaryDirectory(prefix=f"hostile-{name}-") as work:
            started = time.perf_counter()
            figures = CLASSES[name](Path(work))
            print(json.dumps({**figures.as_json(), "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["CLASSES", "Figures", "Run", "struct", "videorefer"]
