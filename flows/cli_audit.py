"""`videorefer audit masks|review|truth-labels|score`: how good the engine's masks and its reviewer are.

`masks` scores the masklets of a root against ground truth (DAVIS PNG folders, RLE JSON, or the synthetic clips'
sidecars) with DAVIS's J and F and writes `reports/audit/masks.json` plus pictures of the worst cases;
`review` writes a self-contained HTML page to label a deterministic sample of the reviewer's candidates;
`truth-labels` labels that same sample from ground truth instead of a human; `score` prints the reviewer's
precision, recall, F1 and accuracy against a labels file, beside the paper's human audit. The work is in
`flows.audit`; heavy imports happen inside the commands, so `videorefer --help` stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

audit_app = typer.Typer(
    name="audit", help="Audits: the engine's masks against ground truth (J&F), the reviewer against labels.",
    no_args_is_help=True, add_completion=False,
)

_ROOT = typer.Option(..., "--root", help="Dataset root (a folder or an fsspec URL).")
_TRUTH = typer.Option(None, "--truth", help="Ground truth: DAVIS PNG folders, RLE JSON file(s) (700K / SA-V / "
                                            "{video: objects}), or .gt.json sidecars; default: the sidecar "
                                            "next to each clip's video.")
_FORMAT = typer.Option("auto", "--format", help="auto, davis, rle-json or sidecar.")
_MATCH_IOU = typer.Option(0.5, "--match-iou", help="Mean J at which a masklet counts as the truth object.")
_SAMPLE = typer.Option(200, "--sample", help="Candidates to sample (0: all).")
_SEED = typer.Option(0, "--seed", help="Seed of the deterministic sample.")


@audit_app.command("masks")
def masks(
    root: str = _ROOT, truth: Path | None = _TRUTH, fmt: str = _FORMAT, match_iou: float = _MATCH_IOU,
    worst: int = typer.Option(6, "--worst", help="Pictures of this many worst-scoring objects."),
) -> None:
    """J&F of the segment (and short_captions) masklets against ground truth; writes reports/audit/masks.json."""
    from flows.audit.masks import audit_masks
    from storage.truth import read_truth

    with _errors():
        audit = audit_masks(root, read_truth(truth, fmt=fmt), match_iou=match_iou, worst=worst)
    typer.echo(f"truth: {audit.truth} ({audit.truth_format})")
    typer.echo(f"{'stage':<16}{'J':>7}{'F':>7}{'J&F':>7}{'J&F all':>9}{'recall':>8}{'moving':>8}{'objects':>9}"
               f"{'found':>7}{'masklets':>10}{'clips':>7}{'no truth':>10}")
    for summary in audit.summaries.values():
        typer.echo(f"{summary.stage:<16}{_num(summary.J_mean):>7}{_num(summary.F_mean):>7}"
                   f"{_num(summary.JF_mean):>7}{_num(summary.JF_mean_all):>9}{_num(summary.recall):>8}"
                   f"{_num(summary.recall_moving):>8}{summary.truth_objects:>9}{summary.found:>7}"
                   f"{summary.masklets:>10}{summary.clips:>7}{summary.clips_without_truth:>10}")
    typer.echo("(J, F, J&F: over matched objects; J&F all: missed objects as empty masks; recall: objects found "
               "with mean J >= match-iou; moving: recall of the objects that move)")
    for case in audit.worst[:3]:
        typer.echo(f"worst: {case.noun} in clip {case.clip_id[:12]} frame {case.frame}: J {case.J:.3f} F "
                   f"{case.F:.3f} ({case.image})")
    typer.echo(f"wrote {Path(root) / audit.path if '://' not in root else audit.path}")
    if audit.summary.truth_objects == 0:
        typer.secho("error: no clip of this root has ground truth there (videos are matched by file name)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@audit_app.command("review")
def review(
    root: str = _ROOT, sample: int = _SAMPLE, seed: int = _SEED,
    out: str | None = typer.Option(None, "--out", help="Page path inside the root "
                                                       "(default reports/audit/review.html)."),
) -> None:
    """An HTML page to label a sample of the reviewer's decisions (keep/drop buttons, labels downloaded as JSON)."""
    from flows.audit.page import write_review_page

    with _errors():
        page = write_review_page(root, sample=sample, seed=seed, out=out)
    typer.echo(f"{page.items} of {page.candidates} reviewed candidates on the page (the reviewer kept {page.kept})")
    typer.echo(f"wrote {page.url}")


@audit_app.command("truth-labels")
def truth_labels(
    root: str = _ROOT, truth: Path | None = _TRUTH, fmt: str = _FORMAT, sample: int = _SAMPLE, seed: int = _SEED,
    match_iou: float = _MATCH_IOU,
    out: str | None = typer.Option(None, "--out", help="Labels path inside the root "
                                                       "(default reports/audit/review-labels.truth.json)."),
) -> None:
    """Label the review sample from ground truth: keep when the masklet matches a truth object of the noun."""
    from flows.audit import review as audit_review
    from flows.pipeline import layout
    from storage.truth import read_truth

    with _errors():
        droot = layout.open_root(root)
        picked = audit_review.sample_candidates(audit_review.review_candidates(droot), sample, seed=seed)
        labels = audit_review.truth_labels(picked, read_truth(truth, fmt=fmt), match_iou=match_iou)
        document = audit_review.labels_document(picked, labels, labeller="synthetic-truth", root=droot.url,
                                                seed=seed, sample=sample)
        relative = out or audit_review.TRUTH_LABELS
        droot.write_json(relative, document)
    keep = sum(label == "keep" for label in labels.values())
    none = sum(label is None for label in labels.values())
    typer.echo(f"{len(picked)} candidates labelled from truth: {keep} keep, {len(picked) - keep - none} drop, "
               f"{none} without truth")
    typer.echo(f"wrote {droot.url_of(relative)}")


@audit_app.command("score")
def score(
    labels: Path = typer.Option(..., "--labels", help="Labels JSON downloaded from the labelling page."),
    root: str | None = typer.Option(None, "--root", help="Read the reviewer's decisions from this root "
                                                         "(default: the decisions stored in the labels file)."),
) -> None:
    """The reviewer's precision, recall, F1 and accuracy against the labels (positive = keep), beside the paper's."""
    from flows.audit.review import PAPER_ITEMS, PAPER_REVIEWER, read_labels, score_labels

    with _errors():
        result = score_labels(read_labels(labels), root=root)
    typer.echo(f"labelled {result.labelled} (unlabelled {result.unlabelled}, not in the root {result.missing}); "
               f"TP {result.tp} FP {result.fp} FN {result.fn} TN {result.tn}")
    typer.echo(f"{'':<11}{'ours':>8}{'paper':>8}")
    for name in ("precision", "recall", "f1", "accuracy"):
        typer.echo(f"{name:<11}{_num(getattr(result, name)):>8}{PAPER_REVIEWER[name]:>8.2f}")
    typer.echo(f"(paper: human audit of {PAPER_ITEMS} items; positive class = keep)")
    if result.labelled == 0:
        typer.secho("error: no labelled item to score", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `videorefer audit ...` to the main app."""
    app.add_typer(audit_app, name="audit")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Engine errors (bad truth, missing stages, a bad labels file) -> one line and exit code 1."""
    from engine.errors import VideoReferError

    try:
        yield
    except (VideoReferError, FileNotFoundError) as exc:
        typer.secho(f"error: {type(exc).__name__}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
