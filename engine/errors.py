"""The exception taxonomy and the reason codes of rejected items.

Failures are sorted by kind: a `ConfigError` fails a run before any model work, a `TransientBackendError`
is retried, a `BackendUnavailableError` fails the run with a clear message, and item-level errors
(`BadVideoError`, `InvalidReplyError`, `NoMaskError`, `InvalidSampleError`) become rejected records whose
`reason` is one of `RejectReason`.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Stable reason codes written into reject tables and shard statistics."""

    BAD_VIDEO = "bad_video"
    VIDEO_NOT_FOUND = "video_not_found"
    EMPTY_VIDEO = "empty_video"
    TRUNCATED_VIDEO = "truncated_video"
    VIDEO_TOO_LARGE = "video_too_large"
    INVALID_REPLY = "invalid_reply"
    NO_NOUNS = "no_nouns"
    STATIC_OBJECT = "static_object"
    NO_BOX = "no_box"
    NO_MASK = "no_mask"
    EMPTY_MASKLET = "empty_masklet"
    DEGENERATE_MASKLET = "degenerate_masklet"
    REVIEW_REJECTED = "review_rejected"
    IDENTITY_SWITCH = "identity_switch"  # the masklet jumps from its object to another one (agents.reviewer)
    MISSING_MASK = "missing_mask"
    MASK_VANISHES_ON_GRID = "mask_vanishes_on_grid"
    REGION_COUNT_MISMATCH = "region_count_mismatch"
    MALFORMED_SAMPLE = "malformed_sample"
    TOO_MANY_FRAMES = "too_many_frames"  # a sample needs more frames than a shard can name (00.jpg .. 99.jpg)
    ITEM_ERROR = "item_error"  # processing this item's data raised an untyped error (the message names it)
    BACKEND_ERROR = "backend_error"
    BACKEND_TRANSIENT = "backend_transient"  # not final: the stage keeps it pending and a retry redoes the item
    # Bad input caught at the edge (ingest, 700K import, bench files, --masks), with the data's own reason:
    INVALID_MASK = "invalid_mask"  # RLE counts that do not cover height x width, a polygon outside the image, ...
    MASK_SIZE_MISMATCH = "mask_size_mismatch"  # a mask whose size is not the video's frame size
    FRAME_OUT_OF_RANGE = "frame_out_of_range"  # a mask on a frame the video does not have
    BAD_SPAN = "bad_span"  # start/end not finite, reversed, or past the video's end
    DUPLICATE_ROW = "duplicate_row"  # a manifest row naming a clip an earlier row of the same manifest names
    TEXT_TOO_LONG = "text_too_long"  # a caption or text above `limits.max_text_chars`
    PATH_NOT_ALLOWED = "path_not_allowed"  # a video path outside the allowed roots (`paths` in the config)
    NOT_A_REGULAR_FILE = "not_a_regular_file"  # a FIFO, device or socket given as a video
    SOURCE_CHANGED = "source_changed"  # the clip's video was replaced or moved (a symlink swapped in) after ingest
    CONTROL_CHARACTERS = "control_characters"  # a stored text with NUL, ESC, bidi overrides (writers clean them)
    HOSTILE_STRUCTURE = "hostile_structure"  # duplicate keys, runaway nesting, invalid UTF-8 / lone surrogates


class VideoReferError(Exception):
    """Base class of every error this project raises on purpose."""

    reason: RejectReason = RejectReason.BACKEND_ERROR


class ConfigError(VideoReferError):
    """A configuration problem: raised before any work starts and never retried."""


class BackendError(VideoReferError):
    """A model backend failed."""

    reason = RejectReason.BACKEND_ERROR


class TransientBackendError(BackendError):
    """Timeouts, HTTP 429 / 5xx and dropped connections: worth retrying with backoff."""

    reason = RejectReason.BACKEND_TRANSIENT

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendUnavailableError(BackendError):
    """The backend stayed down after all retries, or cannot be reached at all: fail the run, not the items."""


class BackendLoadError(ConfigError):
    """A backend that cannot load (its package missing, its weights missing, an import error inside it): the run's
    configuration cannot work, so the run stops at once with one line; never a reject of each item."""


class ReplayMissError(BackendError):
    """A strict replay backend was asked a request that its cassette does not hold."""


class InvalidReplyError(VideoReferError):
    """A model reply that breaks its schema even after the repair attempt."""

    reason = RejectReason.INVALID_REPLY


class BadVideoError(VideoReferError):
    """A video that cannot be opened or decoded."""

    reason = RejectReason.BAD_VIDEO


class VideoNotFoundError(BadVideoError):
    reason = RejectReason.VIDEO_NOT_FOUND


class EmptyVideoError(BadVideoError):
    reason = RejectReason.EMPTY_VIDEO


class TruncatedVideoError(BadVideoError):
    reason = RejectReason.TRUNCATED_VIDEO


class VideoTooLargeError(BadVideoError):
    reason = RejectReason.VIDEO_TOO_LARGE


class NotARegularFileError(BadVideoError):
    """A FIFO, device or socket named as a video: never opened (a FIFO blocks in open, /dev/zero never ends)."""

    reason = RejectReason.NOT_A_REGULAR_FILE


class SourceChangedError(BadVideoError):
    """The clip's video is no longer what ingest checked (other bytes, size or time, or a path now through a
    symlink): reading it would export another video's frames under the clip's id and caption."""

    reason = RejectReason.SOURCE_CHANGED


class PathNotAllowedError(VideoReferError):
    """A path that resolves outside the allowed roots (`..`, an absolute path, a symlink leaving the root)."""

    reason = RejectReason.PATH_NOT_ALLOWED


class NoMaskError(VideoReferError):
    """Grounding or segmentation found nothing usable for an object."""

    reason = RejectReason.NO_MASK

    def __init__(self, message: str, *, reason: RejectReason = RejectReason.NO_MASK) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidSampleError(VideoReferError):
    """A training sample that fails validation (missing masks, `<region>` count mismatch, ...)."""

    reason = RejectReason.MALFORMED_SAMPLE

    def __init__(self, message: str, *, reason: RejectReason = RejectReason.MALFORMED_SAMPLE) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidMaskError(InvalidSampleError, ValueError):
    """A mask from outside that cannot be decoded faithfully: bad RLE counts, a polygon outside the image, a size
    other than the frame's, a frame outside the video. A `ValueError` too, so callers catching that still do."""

    def __init__(self, message: str, *, reason: RejectReason = RejectReason.INVALID_MASK) -> None:
        super().__init__(message, reason=reason)


# Untyped errors that, raised while one item is processed, come from that item's data (a mask of the wrong size,
# garbage RLE, a frame index of -1, a NaN span), not from a broken backend: per-item work makes them an
# `item_error` reject of that item.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, TypeError, ArithmeticError)
