"""Cost of checking a COCO RLE before pycocotools decodes it (`engine.masks.check_rle`), against the decode alone.

Every RLE from outside (700K JSON, manifest objects, bench files, `--masks`) and every `decode_rle` is checked:
the size, and that the run lengths of the counts (parsed from the compressed string, vectorised) cover exactly
height x width. The baseline is pycocotools' own decode of the same masks in the same run: `check_to_decode` is
the check's time over the decode's, per round; the figures are medians over rounds with the spread. Masks: a
720x1280 object (a disc, ~600 characters of counts, typical of 700K/DAVIS) and a 720x1280 noise mask
(~460,000 characters, a worst case). Prints ONE JSON line.

    .venv/bin/python benchmarks/mask_checks.py [--rounds 5] [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pycocotools import mask as coco_mask  # noqa: E402

from engine.masks import check_rle, encode_rle  # noqa: E402


def _masks() -> dict[str, dict]:
    yy, xx = np.ogrid[:720, :1280]
    disc = (yy - 300) ** 2 + (xx - 600) ** 2 < 150**2
    noise = np.random.default_rng(0).random((720, 1280)) > 0.5
    return {"object_720p": encode_rle(disc), "noise_720p": encode_rle(noise)}


def _time(function, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    out: dict[str, object] = {"benchmark": "mask_checks", "rounds": args.rounds}
    for name, rle in _masks().items():
        raw = {"size": rle["size"], "counts": rle["counts"].encode()}
        repeat = args.repeat if name.startswith("object") else max(1, args.repeat // 20)
        checks, decodes, ratios = [], [], []
        for _ in range(args.rounds):
            decode_ms = _time(lambda raw=raw: coco_mask.decode(raw), repeat)
            check_ms = _time(lambda rle=rle: check_rle(rle), repeat)
            checks.append(check_ms)
            decodes.append(decode_ms)
            ratios.append(check_ms / decode_ms)
        out[name] = {
            "counts_chars": len(rle["counts"]),
            "check_ms": round(statistics.median(checks), 4),
            "decode_ms_baseline": round(statistics.median(decodes), 4),
            "check_to_decode": round(statistics.median(ratios), 3),
            "check_to_decode_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
