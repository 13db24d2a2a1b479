"""The figures of a dataset root for its report, gathered by streaming the root one shard and one table at a time.

Per shard, for each stage of the registry (`flows.pipeline.stages.SHARD_STAGES`, in pipeline order): the stored
stage report (items in/out, rejects per reason, seconds), its done marker against the current config (done /
stale / missing), the reject table only while a reason still lacks example messages, and only the columns of
the stage table the report needs, read in record batches (captions, masklets, QA pairs, provenance). Nothing is
kept per record: distributions are counters (integers) or fixed bins (mask area fraction), so memory stays flat
however large the root. Ingest is counted from the sources tables' Parquet metadata and the ingest rejects.

Model-call costs come from the provenance columns. A stage's records also carry the provenance of the stages
before it, and one call can sit on several records (the analyzer's one call per clip is on each of its nouns),
so a call is counted once per shard, under the first stage (in pipeline order) whose table holds it, keyed by
(clip, agent, backend, model, prompt version, latency, tokens). Calls of items that ended as rejects are not in
any table, so they are not counted. Run reports (`reports/runs/*.json`, the latest `MAX_RUNS`), the export's
`_stats.json` and the mask audit (`reports/audit/masks.json`, optional, every key optional) complete the figures.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.pipeline import layout
from flows.pipeline.stages import ANALYZE, EXPORT, GENERATE_QA, INGEST, REFINE, SHARD_STAGES, SHORT_CAPTIONS
from storage.root import DatasetRoot

AREA_BINS = 40  # equal bins of the mask area fraction over [0, 1]
REJECT_EXAMPLES = 3  # example messages kept per (stage, reason)
MAX_RUNS = 30  # latest run reports shown
AUDIT_PATH = "reports/audit/masks.json"
RUNS_DIR = "reports/runs"
BATCH_ROWS = 512  # records decoded at once from a stage table

# Kinds of training data, as the exported samples name their task.
DETAILED, SHORT, QA = "detailed", "short", "qa"
KIND_OF_STAGE = {REFINE: DETAILED, SHORT_CAPTIONS: SHORT, GENERATE_QA: QA}
NOUNS_PER_CLIP, ACCEPTED_PER_CLIP = "nouns found (analyze)", "accepted objects (refine)"


@dataclass(frozen=True, slots=True, kw_only=True)
class StageFunnel:
    """One stage over the whole root: shard progress and the stored figures of its shards."""

    stage: str
    shards: int  # shards in the root
    done: int  # shards done for the current config
    stale: int  # shards done for another config (they re-run on the next build)
    reported: int  # shards with stored figures
    items_in: int
    items_out: int
    rejects: Mapping[str, int]
    seconds: float

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    @property
    def missing(self) -> int:
        return max(0, self.shards - self.done - self.stale)

    @property
    def reject_fraction(self) -> float:
        return self.rejected / self.items_in if self.items_in else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCost:
    """The model calls of one (stage, agent, backend, model, prompt version): count, seconds and tokens."""

    stage: str
    agent: str
    backend: str
    model: str
    prompt_version: str
    calls: int
    latency_s: float
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectExample:
    stage: str
    reason: str
    item_id: str
    clip_id: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Distributions:
    """Counters of the accepted data (keys: kind or series name, then value -> count)."""

    caption_words: Mapping[str, Mapping[int, int]]
    mask_area: Mapping[str, tuple[int, ...]]  # AREA_BINS counts per kind
    masklet_frames: Mapping[str, Mapping[int, int]]
    objects_per_clip: Mapping[str, Mapping[int, int]]
    qa_types: Mapping[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    run_id: str
    created: str
    wall_seconds: float
    ran: int  # (stage, shard) tasks that ran
    skipped: int  # tasks skipped as already done
    failures: int
    rejected: int
    failed_because: str = ""  # why the run failed (a failed stage task, too many rejects); "" when it did not


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportSummary:
    samples: Mapping[str, int]  # task -> samples
    rejects: Mapping[str, int]
    tars: int
    bytes: int
    json_files: int

    @property
    def total(self) -> int:
        return sum(self.samples.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSummary:
    """The mask audit as far as it could be read (every field optional)."""

    j_mean: float | None = None
    f_mean: float | None = None
    jf_mean: float | None = None
    stage: str = ""  # the stage the headline figures are of
    objects: tuple[Mapping[str, Any], ...] = ()  # of the headline stage when objects name their stage
    worst: tuple[Mapping[str, Any], ...] = ()
    stages: tuple[Mapping[str, Any], ...] = ()  # per-stage figures, each with its `stage`
    other: Mapping[str, Any] = field(default_factory=dict)  # further scalar figures of the file
    error: str = ""  # why the file could not be read


@dataclass(frozen=True, slots=True, kw_only=True)
class RootFigures:
    """Everything the report shows except the gallery."""

    url: str
    name: str
    shards: int
    clips: int
    funnel: tuple[StageFunnel, ...]
    reject_examples: tuple[RejectExample, ...]
    costs: tuple[CallCost, ...]
    distributions: Distributions
    runs: tuple[RunSummary, ...]
    export: ExportSummary | None
    audit: AuditSummary | None
    notes: tuple[str, ...]  # what is missing, in words

    def stage(self, name: str) -> StageFunnel | None:
        return next((row for row in self.funnel if row.stage == name), None)


# ---------------------------------------------------------------- reading


def iter_table_rows(root: DatasetRoot, stage: str, shard_id: str, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The given columns (those the table has) of a stage table, row by row, decoded `BATCH_ROWS` at a time."""
    import pyarrow.parquet as pq

    path = root.stage_path(stage, shard_id)
    if not root.exists(path):
        return
    with root.open_read(path) as handle:
        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        wanted = [column for column in columns if column in names]
        if not wanted:
            return
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            yield from batch.to_pylist()


def parquet_rows(root: DatasetRoot, relative: str) -> int:
    """Rows of a Parquet file from its footer (0 when it is missing or unreadable)."""
    import pyarrow.parquet as pq

    if not root.exists(relative):
        return 0
    try:
        with root.open_read(relative) as handle:
            return int(pq.ParquetFile(handle).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a broken table counts as no rows; the stage status says the rest
        return 0


def _current_hashes(root: DatasetRoot) -> dict[str, str] | None:
    """Chained hash of every stage for the root's recorded config; None when it cannot be resolved."""
    from flows.pipeline.stages import chained_hash

    try:
        config = layout.resolve_config(root)
        return {stage: chained_hash(config, stage) for stage in SHARD_STAGES}
    except Exception:  # noqa: BLE001 - a report still renders for a root whose config no longer parses
        return None


# ---------------------------------------------------------------- accumulating


class _Accumulator:
    """Mutable counters while streaming; `freeze` turns them into `RootFigures` parts."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.stale: Counter[str] = Counter()
        self.reported: Counter[str] = Counter()
        self.items_in: Counter[str] = Counter()
        self.items_out: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self.rejects: dict[str, Counter[str]] = defaultdict(Counter)
        self.examples: dict[tuple[str, str], list[RejectExample]] = defaultdict(list)
        self.costs: dict[tuple[str, str, str, str, str], list[float]] = {}
        self.words: dict[str, Counter[int]] = defaultdict(Counter)
        self.area: dict[str, list[int]] = {}
        self.frames: dict[str, Counter[int]] = defaultdict(Counter)
        self.per_clip: dict[str, Counter[int]] = defaultdict(Counter)
        self.qa_types: Counter[str] = Counter()

    # ------------------------------------------------------------ per (stage, shard)

    def stage_report(self, root: DatasetRoot, stage: str, shard_id: str) -> dict[str, int]:
        """Add the stored figures of (stage, shard); return its rejects per reason."""
        path = layout.stage_report_path(stage, shard_id)
        if not root.exists(path):
            return {}
        try:
            data = root.read_json(path)
        except (ValueError, UnicodeDecodeError):
            return {}
        rejects = {str(k): int(v) for k, v in (data.get("rejects") or {}).items()}
        self.reported[stage] += 1
        self.items_in[stage] += int(data.get("items_in", 0))
        self.items_out[stage] += int(data.get("items_out", 0))
        self.seconds[stage] += float(data.get("seconds", 0.0))
        self.rejects[stage].update(rejects)
        return rejects

    def reject_examples(self, root: DatasetRoot, stage: str, shard_id: str, reasons: Mapping[str, int]) -> None:
        """Read the shard's reject table only when one of its reasons still lacks examples."""
        if not any(len(self.examples[(stage, reason)]) < REJECT_EXAMPLES for reason in reasons):
            return
        try:
            rejects = layout.read_stage_rejects(root, stage, shard_id)
        except Exception:  # noqa: BLE001 - examples are a courtesy; the counts come from the stage report
            return
        for reject in rejects:
            bucket = self.examples[(stage, str(reject.reason))]
            if len(bucket) < REJECT_EXAMPLES:
                bucket.append(RejectExample(stage=stage, reason=str(reject.reason), item_id=reject.item_id,
                                            clip_id=reject.clip_id, message=reject.message))

    def call(self, stage: str, clip_id: str, entry: Mapping[str, Any], seen: set[tuple[Any, ...]]) -> None:
        key = (clip_id, entry.get("agent", ""), entry.get("backend", ""), entry.get("model", ""),
               entry.get("prompt_version", ""), entry.get("latency_s", 0.0), entry.get("prompt_tokens", 0),
               entry.get("completion_tokens", 0))
        if key in seen:
            return
        seen.add(key)
        group = (stage, *(str(part or "") for part in key[1:5]))
        figures = self.costs.setdefault(group, [0, 0.0, 0, 0])
        figures[0] += 1
        figures[1] += float(entry.get("latency_s") or 0.0)
        figures[2] += int(entry.get("prompt_tokens") or 0)
        figures[3] += int(entry.get("completion_tokens") or 0)

    def masklet(self, kind: str, masklet: Mapping[str, Any] | None) -> None:
        from engine.masks import area

        if not masklet:
            return
        masks = masklet.get("masks") or []
        self.frames[kind][len(masks)] += 1
        bins = self.area.setdefault(kind, [0] * AREA_BINS)
        for mask in masks:
            pixels = int(mask["height"]) * int(mask["width"])
            if pixels <= 0:
                continue
            fraction = area({"size": [int(mask["height"]), int(mask["width"])], "counts": mask["counts"]}) / pixels
            bins[min(AREA_BINS - 1, max(0, int(fraction * AREA_BINS)))] += 1

    def words_of(self, kind: str, text: str | None) -> None:
        if text:
            self.words[kind][len(text.split())] += 1

    def table(self, root: DatasetRoot, stage: str, shard_id: str, clips: int, seen: set[tuple[Any, ...]]) -> None:
        """Stream the columns of (stage, shard) this report needs into the counters."""
        if stage == EXPORT:
            return
        kind = KIND_OF_STAGE.get(stage)
        if stage == GENERATE_QA:
            for row in iter_table_rows(root, stage, shard_id, ("clip_id", "qa", "objects", "provenance")):
                clip_id = row.get("clip_id", "")
                for entry in row.get("provenance") or ():
                    self.call(stage, clip_id, entry, seen)
                for obj in row.get("objects") or ():
                    for entry in obj.get("provenance") or ():
                        self.call(stage, clip_id, entry, seen)
                    self.masklet(QA, obj.get("masklet"))
                for pair in row.get("qa") or ():
                    self.qa_types[str(pair.get("qa_type") or "unknown")] += 1
                    self.words_of("QA answer", pair.get("answer"))
            return
        columns = ["clip_id", "object_id", "provenance"]
        if stage == REFINE:
            columns += ["detailed_caption", "masklet"]
        elif stage == SHORT_CAPTIONS:
            columns += ["short_caption", "masklet"]
        per_clip: Counter[str] = Counter()
        present = False
        for row in iter_table_rows(root, stage, shard_id, columns):
            present = True
            clip_id = row.get("clip_id", "")
            per_clip[clip_id] += 1
            for entry in row.get("provenance") or ():
                self.call(stage, clip_id, entry, seen)
            if stage == REFINE:
                self.words_of(DETAILED, row.get("detailed_caption"))
            elif stage == SHORT_CAPTIONS:
                self.words_of(SHORT, row.get("short_caption"))
            if kind is not None:
                self.masklet(kind, row.get("masklet"))
        if present or root.exists(root.stage_path(stage, shard_id)):
            series = {ANALYZE: NOUNS_PER_CLIP, REFINE: ACCEPTED_PER_CLIP}.get(stage)
            if series is not None:
                self.per_clip[series].update(per_clip.values())
                self.per_clip[series][0] += max(0, clips - len(per_clip))

    # ------------------------------------------------------------ frozen results

    def costs_frozen(self) -> tuple[CallCost, ...]:
        order = {stage: k for k, stage in enumerate(SHARD_STAGES)}
        rows = [
            CallCost(stage=stage, agent=agent, backend=backend, model=model, prompt_version=prompt, calls=int(v[0]),
                     latency_s=float(v[1]), prompt_tokens=int(v[2]), completion_tokens=int(v[3]))
            for (stage, agent, backend, model, prompt), v in self.costs.items()
        ]
        return tuple(sorted(rows, key=lambda r: (order.get(r.stage, 99), r.agent, r.backend, r.model,
                                                 r.prompt_version)))

    def distributions(self) -> Distributions:
        return Distributions(
            caption_words={k: dict(sorted(v.items())) for k, v in self.words.items() if v},
            mask_area={k: tuple(v) for k, v in self.area.items() if any(v)},
            masklet_frames={k: dict(sorted(v.items())) for k, v in self.frames.items() if v},
            objects_per_clip={k: dict(sorted(v.items())) for k, v in self.per_clip.items() if v},
            qa_types=dict(sorted(self.qa_types.items())),
        )


# ---------------------------------------------------------------- the whole root


def collect(root: layout.RootLike) -> RootFigures:
    """Stream the root once (shard by shard) and return its figures; a root with nothing in it is fine."""
    droot = layout.open_root(root)
    notes: list[str] = []
    name = _dataset_name(droot, notes)
    shards = layout.shards(droot)
    hashes = _current_hashes(droot)
    if hashes is None and shards:
        notes.append("the engine config in dataset.json could not be read: stages are counted as done by their "
                     "markers, whatever config they ran with")
    acc = _Accumulator()
    clips = 0
    sourced = 0
    for shard in shards:
        shard_clips = parquet_rows(droot, droot.source_path(shard))
        clips += shard_clips
        sourced += droot.exists(droot.source_path(shard))
        seen: set[tuple[Any, ...]] = set()  # model calls already counted in this shard
        for stage in SHARD_STAGES:
            marker = droot.read_done(stage, shard)
            if marker is not None:
                if hashes is None or marker.get("config_hash") == hashes[stage]:
                    acc.done[stage] += 1
                else:
                    acc.stale[stage] += 1
            reasons = acc.stage_report(droot, stage, shard)
            if reasons:
                acc.reject_examples(droot, stage, shard, reasons)
            acc.table(droot, stage, shard, shard_clips, seen)
    funnel = [_ingest_funnel(droot, len(shards), sourced, clips, acc)]
    funnel += [
        StageFunnel(stage=stage, shards=len(shards), done=acc.done[stage], stale=acc.stale[stage],
                    reported=acc.reported[stage], items_in=acc.items_in[stage], items_out=acc.items_out[stage],
                    rejects=dict(sorted(acc.rejects[stage].items())), seconds=acc.seconds[stage])
        for stage in SHARD_STAGES
    ]
    examples = tuple(example for key in sorted(acc.examples) for example in acc.examples[key])
    export = _export_summary(droot)
    runs = _runs(droot)
    audit = read_audit(droot)
    notes.extend(_missing(funnel, len(shards), export, runs, audit))
    return RootFigures(url=droot.url, name=name, shards=len(shards), clips=clips, funnel=tuple(funnel),
                       reject_examples=examples, costs=acc.costs_frozen(), distributions=acc.distributions(),
                       runs=runs, export=export, audit=audit, notes=tuple(notes))


def _dataset_name(root: DatasetRoot, notes: list[str]) -> str:
    fallback = root.url.rstrip("/").rsplit("/", 1)[-1] or root.url
    if not root.exists("dataset.json"):
        notes.append("no dataset.json: nothing was ingested into this root yet (`videorefer ingest` or "
                     "`videorefer build --manifest`)")
        return fallback
    try:
        return str(root.read_dataset_json().get("name") or fallback)
    except (ValueError, UnicodeDecodeError):
        notes.append("dataset.json cannot be read")
        return fallback


def _ingest_funnel(root: DatasetRoot, shards: int, sourced: int, clips: int, acc: _Accumulator) -> StageFunnel:
    try:
        rejects = layout.ingest_rejects(root)
    except Exception:  # noqa: BLE001 - unreadable ingest rejects leave the counts without them
        rejects = []
    reasons = Counter(str(r.reason) for r in rejects)
    for reject in rejects:
        bucket = acc.examples[(INGEST, str(reject.reason))]
        if len(bucket) < REJECT_EXAMPLES:
            bucket.append(RejectExample(stage=INGEST, reason=str(reject.reason), item_id=reject.item_id,
                                        clip_id=reject.clip_id, message=reject.message))
    return StageFunnel(stage=INGEST, shards=shards, done=sourced, stale=0, reported=sourced,
                       items_in=clips + len(rejects), items_out=clips, rejects=dict(sorted(reasons.items())),
                       seconds=0.0)


def _export_summary(root: DatasetRoot) -> ExportSummary | None:
    from storage.wds import STATS_NAME

    stats_path = f"export/wds/{STATS_NAME}"
    if not root.exists(stats_path):
        return None
    try:
        splits = (root.read_json(stats_path) or {}).get("splits", {}) or {}
    except (ValueError, UnicodeDecodeError):
        return None
    samples: Counter[str] = Counter()
    rejects: Counter[str] = Counter()
    tars = size = 0
    for figures in splits.values():
        samples.update({str(k): int(v) for k, v in (figures.get("samples_per_task") or {}).items()})
        rejects.update({str(k): int(v) for k, v in (figures.get("rejects_per_reason") or {}).items()})
        tars += len(figures.get("tars") or ())
        size += int(figures.get("bytes") or 0)
    json_files = sum(name.endswith(".json") for name in root.listdir("export/json"))
    return ExportSummary(samples=dict(sorted(samples.items())), rejects=dict(sorted(rejects.items())), tars=tars,
                         bytes=size, json_files=json_files)


_RUN_TIME = re.compile(r"(\d{8}T\d{6})")


def _runs(root: DatasetRoot) -> tuple[RunSummary, ...]:
    """The latest `MAX_RUNS` run reports, oldest first (ordered by the time in their ids)."""
    names = [name for name in root.listdir(RUNS_DIR) if name.endswith(".json")]

    def when(name: str) -> tuple[str, str]:
        found = _RUN_TIME.search(name)
        return (found.group(1) if found else "", name)

    out = []
    for name in sorted(names, key=when)[-MAX_RUNS:]:
        try:
            data = root.read_json(f"{RUNS_DIR}/{name}")
        except (ValueError, UnicodeDecodeError):
            continue
        stages = data.get("stages") or []
        shards = sum(int(s.get("shards", 0)) for s in stages)
        skipped = sum(int(s.get("shards_skipped", 0)) for s in stages)
        out.append(RunSummary(run_id=str(data.get("run_id") or name.removesuffix(".json")),
                              created=str(data.get("created", "")), wall_seconds=float(data.get("wall_seconds", 0.0)),
                              ran=shards - skipped, skipped=skipped, failures=len(data.get("failures") or ()),
                              rejected=sum(int(s.get("rejected", 0)) for s in stages),
                              failed_because=str(data.get("failed_because") or "")))
    return tuple(out)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def read_audit(root: DatasetRoot) -> AuditSummary | None:
    """The mask audit (`reports/audit/masks.json`) when there is one; any key may be missing."""
    if not root.exists(AUDIT_PATH):
        return None
    try:
        data = root.read_json(AUDIT_PATH)
    except (ValueError, UnicodeDecodeError) as exc:
        return AuditSummary(error=f"{AUDIT_PATH} cannot be read: {exc}")
    if not isinstance(data, Mapping):
        return AuditSummary(error=f"{AUDIT_PATH} is not a JSON object")
    stage = data.get("stage") if isinstance(data.get("stage"), str) else ""
    objects = tuple(o for o in _as_list(data.get("objects")) if isinstance(o, Mapping))
    if stage and any("stage" in o for o in objects):
        objects = tuple(o for o in objects if o.get("stage") == stage)
    worst = tuple(o for o in _as_list(data.get("worst")) if isinstance(o, Mapping))
    stages_data = data.get("stages")
    stages = tuple({"stage": str(name), **value} for name, value in stages_data.items()
                   if isinstance(value, Mapping)) if isinstance(stages_data, Mapping) else ()
    other = {k: v for k, v in data.items() if k not in _AUDIT_SHOWN and isinstance(v, str | int | float | bool)}
    return AuditSummary(j_mean=_number(data.get("J_mean")), f_mean=_number(data.get("F_mean")),
                        jf_mean=_number(data.get("JF_mean")), stage=stage, objects=objects, worst=worst,
                        stages=stages, other=other)


# Keys of the audit shown in their own places, or that only identify the file.
_AUDIT_SHOWN = {"J_mean", "F_mean", "JF_mean", "stage", "objects", "worst", "stages", "kind", "version", "root",
                "definitions"}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _missing(funnel: Sequence[StageFunnel], shards: int, export: ExportSummary | None,
             runs: Sequence[RunSummary], audit: AuditSummary | None) -> list[str]:
    notes = []
    if not shards:
        notes.append("no shards: no clip has been ingested and pinned yet")
        return notes
    for row in funnel[1:]:
        if row.done < shards:
            stale = f", {row.stale} done with another config" if row.stale else ""
            notes.append(f"{row.stage}: {row.done} of {shards} shards done for the current config{stale} "
                         "(`videorefer build` runs what is missing)")
    if export is None or not export.total:
        notes.append("no exported samples yet: the gallery is empty until `export` has run")
    if not runs:
        notes.append("no run reports under reports/runs/ (stages were run without a flow)")
    if audit is None:
        notes.append("no mask audit (reports/audit/masks.json): `videorefer audit masks` measures segmentation "
                     "quality")
    return notes


def summary_json(figures: RootFigures) -> dict[str, Any]:
    """The figures as plain JSON (written beside the page as `reports/report.json`)."""
    from dataclasses import asdict

    data = asdict(figures)
    data["distributions"]["caption_words"] = {k: {str(n): c for n, c in v.items()}
                                               for k, v in figures.distributions.caption_words.items()}
    data["distributions"]["masklet_frames"] = {k: {str(n): c for n, c in v.items()}
                                                for k, v in figures.distributions.masklet_frames.items()}
    data["distributions"]["objects_per_clip"] = {k: {str(n): c for n, c in v.items()}
                                                  for k, v in figures.distributions.objects_per_clip.items()}
    data["distributions"]["mask_area"] = {k: list(v) for k, v in figures.distributions.mask_area.items()}
    return data
