"""What the audits share: reading a stage's records from a root, masks at the truth's size, mean J, nouns, images.

`stage_records` yields (shard, record) of a stage over every shard that has its table. `mask_array` decodes a
mask (or makes an empty one) at a given size, resizing by nearest neighbour when the engine's video and the
truth differ in resolution (audits score at the truth's resolution, as DAVIS does). `mean_j` is the mean region
similarity of a masklet against a truth object over given frames; `noun_matches` says whether a truth object
is what a noun names (head noun against its name or category, and a colour word, when the noun has one, against
its colour). Images are written as PNG (reports) or embedded as JPEG data URIs (the labelling page).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from engine.masks import decode_rle, resize_mask
from engine.metrics import region_similarity
from engine.types import ObjectRecord, RleMask
from flows.pipeline import layout
from storage.truth import TruthObject

AUDIT_DIR = "reports/audit"
RED = (230, 40, 40)
GREEN = (40, 200, 70)
_WORD = re.compile(r"[a-z]+")
_COLOR_WORDS = frozenset({
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
    "silver", "golden", "gold",
})


def stage_records(root: layout.RootLike, stage: str) -> Iterator[tuple[str, ObjectRecord]]:
    """(shard id, record) of every object record of `stage`, shard by shard, over the shards that have its table."""
    droot = layout.open_root(root)
    for shard in layout.shards(droot):
        if not droot.exists(droot.stage_path(stage, shard)):
            continue
        for record in layout.read_stage(droot, stage, shard):
            if isinstance(record, ObjectRecord):
                yield shard, record


def mask_array(mask: RleMask | Mapping | None, height: int, width: int) -> np.ndarray:
    """The mask as booleans `[height, width]` (nearest-neighbour resized if needed); an empty mask for None."""
    if mask is None:
        return np.zeros((height, width), dtype=bool)
    array = decode_rle(mask)
    if array.shape != (height, width):
        array = resize_mask(array, height, width)
    return array


def mean_j(masks: Mapping[int, RleMask], truth: TruthObject, frames: Sequence[int], height: int, width: int) -> float:
    """Mean J of a masklet against a truth object over `frames` (a frame the masklet lacks is an empty mask)."""
    if not frames:
        return 0.0
    return float(np.mean([
        region_similarity(mask_array(masks.get(f), height, width), mask_array(truth.masks[f], height, width))
        for f in frames
    ]))


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("x", "s", "ch", "sh")):
        return word[:-2]
    return word[:-1] if len(word) > 2 and word.endswith("s") and not word.endswith("ss") else word


def noun_matches(noun: str, obj: TruthObject) -> bool:
    """Whether `noun` ("ball", "the red balls") names the truth object: its head word is the object's name or
    category (singular or plural), and a colour word in the noun, if any, is the object's colour (when known)."""
    words = _WORD.findall(noun.lower())
    if not words:
        return False
    names = {value.lower() for value in (obj.name, obj.category) if value}
    if not names or _singular(words[-1]) not in {_singular(name) for name in names} | names:
        return False
    colours = _COLOR_WORDS.intersection(words)
    return not (colours and obj.color) or obj.color.lower() in colours


def read_frame(video_uri: str, index: int) -> np.ndarray | None:
    """One RGB frame of a video, or None when it cannot be read (the audit still writes its figures)."""
    from engine.video import read_frames

    try:
        return read_frames(video_uri, [int(index)])[0]
    except Exception:  # a missing or broken video only costs the picture
        return None


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk (area interpolation) so that its longer side is at most `max_side`."""
    import cv2

    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def png_bytes(rgb: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return encoded.tobytes()


def jpeg_data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("could not encode a JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def put_text(image: np.ndarray, text: str, origin: tuple[int, int], color: tuple[int, int, int]) -> np.ndarray:
    import cv2

    out = image.copy()
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return out
