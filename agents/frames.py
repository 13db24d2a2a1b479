"""The frames agents show to models: which frames of a clip, read once per clip, and encoded as JPEG parts.

A clip is a time span of a video; `clip_frame_range` turns it into absolute frame indices (from the
clip's own metadata when it carries fps and frame count, else from a probe), `sample_clip_frames` picks
the release's uniform frames inside it, and `decode_clip_frames` decodes them (agents call it from worker
threads; `read_clip_frames` is the awaitable form) through the stage task's `FrameCache`, so a clip is decoded
once per stage task however many of its objects and agents read it. `jpeg_part` shrinks a frame so its
longer side is at most `max_side` pixels (what chat models are shown; full resolution only costs
tokens) and encodes it (Pillow, imported lazily).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import numpy as np

from agents.backends.base import ImagePart
from engine.types import Clip
from engine.video import VideoInfo, probe, read_frames, span_to_frames, uniform_indices

DEFAULT_MAX_SIDE = 448
JPEG_QUALITY = 90


def clip_frame_range(clip: Clip) -> tuple[int, int]:
    """First and last (inclusive) absolute frame index of the clip's span in its video."""
    if clip.fps > 0 and clip.num_frames > 0:
        info = VideoInfo(
            fps=clip.fps,
            width=clip.width,
            height=clip.height,
            num_frames=clip.num_frames,
            duration_s=clip.num_frames / clip.fps,
            backend="clip",
            is_frame_folder=False,
        )
    else:
        info = probe(clip.video_uri)
    return span_to_frames(info, clip.start_s, clip.end_s)


def sample_clip_frames(clip: Clip, num_frames: int) -> list[int]:
    """`num_frames` uniform segment-middle absolute indices inside the clip's span (repeats on short clips)."""
    first, last = clip_frame_range(clip)
    return [first + index for index in uniform_indices(last - first + 1, num_frames)]


class FrameCache:
    """Decoded frames of recently read clips, so the agents of one stage task decode each clip once.

    Installed for a block of work with `frame_cache()` (the runner wraps every stage task in one); agents read
    through `decode_clip_frames`, which asks the cache for the frames it holds and decodes only the missing ones.
    Least recently used clips are dropped past `max_bytes`. `decodes[video]` counts decode calls per video.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._frames: OrderedDict[str, dict[int, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.decodes: Counter[str] = Counter()

    def read(self, video_uri: str, indices: Sequence[int]) -> np.ndarray:
        wanted = [int(i) for i in indices]
        with self._lock:
            held = self._frames.get(video_uri, {})
            missing = sorted({i for i in wanted if i not in held})
        if missing:
            decoded = read_frames(video_uri, missing)
            with self._lock:
                self.decodes[video_uri] += 1
                held = self._frames.setdefault(video_uri, {})
                for index, frame in zip(missing, decoded, strict=True):
                    if index not in held:
                        held[index] = frame
                        self._bytes += frame.nbytes
                self._evict(keep=video_uri)
        with self._lock:
            held = self._frames[video_uri]
            self._frames.move_to_end(video_uri)
            frames = [held[i] for i in wanted]
        return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), dtype=np.uint8)

    def _evict(self, keep: str) -> None:
        while self._bytes > self.max_bytes and len(self._frames) > 1:
            video, held = next(iter(self._frames.items()))
            if video == keep:
                self._frames.move_to_end(video)
                continue
            del self._frames[video]
            self._bytes -= sum(frame.nbytes for frame in held.values())


_ACTIVE_CACHE: ContextVar[FrameCache | None] = ContextVar("videorefer_frame_cache", default=None)


@contextlib.contextmanager
def frame_cache(cache: FrameCache | None = None) -> Iterator[FrameCache]:
    """Make `cache` (a new one by default) the one `decode_clip_frames` uses in this context (threads that
    `asyncio.to_thread` starts inherit it)."""
    cache = cache or FrameCache()
    token = _ACTIVE_CACHE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE_CACHE.reset(token)


def decode_clip_frames(clip: Clip, indices: Sequence[int]) -> np.ndarray:
    """The frames at absolute `indices` of the clip's video (blocking: call it from a worker thread)."""
    return read_video_frames(clip.video_uri, indices)


def read_video_frames(video_uri: str, indices: Sequence[int]) -> np.ndarray:
    """`engine.video.read_frames` through the active frame cache, when there is one."""
    cache = _ACTIVE_CACHE.get()
    if cache is None:
        return read_frames(video_uri, list(indices))
    return cache.read(video_uri, indices)


async def read_clip_frames(clip: Clip, indices: Sequence[int]) -> np.ndarray:
    """The frames at absolute `indices` of the clip's video, decoded in a worker thread."""
    return await asyncio.to_thread(decode_clip_frames, clip, indices)


def jpeg_part(frame: np.ndarray, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = JPEG_QUALITY) -> ImagePart:
    """One RGB uint8 frame `[h, w, 3]` as a JPEG image part, downscaled to `max_side` when larger."""
    from PIL import Image  # lazy: only agents that show frames need Pillow

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    longest = max(image.size)
    if max_side and longest > max_side:
        scale = max_side / longest
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return ImagePart(jpeg=buffer.getvalue())


def unique_in_order(indices: Sequence[int]) -> list[int]:
    """The distinct indices in first-seen order (short clips repeat frames; each is decoded once)."""
    return list(dict.fromkeys(int(index) for index in indices))
