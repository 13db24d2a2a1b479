"""Training step time and peak memory: a tiny VideoRefer on CPU, or a Qwen2-1.5B-sized stage-3 step on CUDA.

CPU (default): the tiny preset, stage-3 trainable groups, a micro-batch of synthetic samples encoded by the real
processor; reports the median step time (forward + backward + AdamW) over `--steps` after a warm-up, the process's
peak resident memory, and as a same-run baseline the step time of the bare tiny Qwen2 LLM on the same number of
tokens (`ratio` = VideoRefer step / LLM-only step: what the vision tower, connector and object encoder add). The
two steps alternate (A B, B A, ...) so that load from other processes hits both alike; each time is a median.

`--cuda`: SigLIP so400m at 384 px (frozen) + STC connector + a random Qwen2-1.5B-shaped LLM (`--preset 1.5b`:
28 layers, hidden 1536, Qwen2's 151,647-token vocabulary; `0.5b`: 24 layers, hidden 896), built on the device,
16 frames per sample, bf16 autocast, flash-attention 2 when installed (SDPA otherwise); reports tokens/s, peak
GPU memory of the VideoRefer step (measured before the baseline's optimizer exists) and MFU (FLOPs of one step
counted by `torch.utils.flop_counter` over the step time and the GPU's peak dense bf16 rate, `--peak-tflops` or a
table of known GPUs), with the same alternating LLM-only baseline. `--cuda --device cpu --preset tiny` runs that
code path on the CPU (what `scripts/gpu_check.sh --cpu-dry-run` does). Prints ONE JSON line either way.

    .venv/bin/python benchmarks/train_step.py [--steps 10] [--micro-batch 4]
    python benchmarks/train_step.py --cuda [--preset 1.5b] [--micro-batch 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Peak dense bf16 FLOP/s of known GPUs (no sparsity); the longest name contained in the device's name wins.
PEAK_BF16 = {"H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H200 NVL": 835e12,
             "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

QWEN2_1_5B_SIZES = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}

QWEN2_0_5B_SIZES = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def _batch(processor, *, samples: int, frames: int, size: int) -> dict:
    import numpy as np

    from model.training.synthetic import synthetic_sample
    from storage.samples import sample_to_json

    items = []
    for index in range(samples):
        sample, images = synthetic_sample(index, frames=frames, size=size, multi_frame=index % 2 == 0)
        items.append(processor.encode_wds(sample_to_json(sample), np.stack(images)))
    return processor.collate(items)


def _build(preset: str, device: str, llm_layers: int | None):
    import torch

    from model.configuration import QWEN2_7B_WITH_REGION, TINY_SPECIAL_TOKENS, VideoReferConfig
    from model.modeling import VideoReferForCausalLM, default_attn_implementation, set_trainable
    from model.processing import VideoReferProcessor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    if preset == "tiny":
        config = VideoReferConfig.preset("tiny")
    else:
        text = {**QWEN2_7B_WITH_REGION, **(QWEN2_1_5B_SIZES if preset == "1.5b" else QWEN2_0_5B_SIZES)}
        if llm_layers:
            text["num_hidden_layers"] = llm_layers
        # The tiny tokenizer's ids (all < 512) stand in for Qwen2's; only `<region>`'s id has to agree.
        config = VideoReferConfig.preset("7b", text_config=text,
                                         region_token_id=TINY_SPECIAL_TOKENS.index("<region>"))
    config._attn_implementation = default_attn_implementation(device)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: seconds for 2B parameters on a GPU, not minutes on CPU
        model = VideoReferForCausalLM(config)
    set_trainable(model, {"connector", "object_encoder", "llm"})
    model.train()
    processor = VideoReferProcessor.from_config(tokenizer, config)
    return model, processor, config


def _step_fn(model, batch, optimizer, autocast):
    import torch

    def step() -> None:
        with autocast():
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _paired_times(first, second, steps: int, sync) -> tuple[float, float]:
    """Median seconds per step of `first` and `second`, run alternately (order swapped each round) after a warm-up."""
    import statistics

    times: tuple[list[float], list[float]] = ([], [])
    first(), second()
    sync()
    for round_index in range(steps):
        order = ((0, first), (1, second)) if round_index % 2 == 0 else ((1, second), (0, first))
        for index, step in order:
            started = time.perf_counter()
            step()
            sync()
            times[index].append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def _llm_only_step(model, batch, lr: float, autocast):
    """The baseline: the model's bare LLM trained on random text of the batch's shape (as many tokens)."""
    import torch

    llm = model.language_model
    ids = torch.randint(4, int(model.config.text_config.vocab_size), batch["input_ids"].shape,
                        device=batch["input_ids"].device)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=lr)

    def step() -> None:
        with autocast():
            loss = llm(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_bf16(name: str, override_tflops: float | None = None) -> float | None:
    """The device's peak dense bf16 FLOP/s: `override_tflops`, else the longest `PEAK_BF16` key in `name`."""
    if override_tflops:
        return override_tflops * 1e12
    known = [key for key in PEAK_BF16 if key in name]
    return PEAK_BF16[max(known, key=len)] if known else None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_cpu(args: argparse.Namespace) -> dict:
    import contextlib

    import torch

    torch.set_num_threads(args.threads)
    model, processor, config = _build("tiny", "cpu", None)
    batch = _batch(processor, samples=args.micro_batch, frames=4, size=config.image_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rss_before = _peak_rss_mb()
    step = _step_fn(model, batch, optimizer, contextlib.nullcontext)
    llm_step = _llm_only_step(model, batch, 1e-4, contextlib.nullcontext)
    step_s, llm_s = _paired_times(step, llm_step, args.steps, lambda: None)
    peak_rss = _peak_rss_mb()
    tokens = int(batch["attention_mask"].sum())
    return {
        "benchmark": "train_step", "device": "cpu", "preset": "tiny", "threads": args.threads,
        "micro_batch": args.micro_batch, "tokens_per_step": tokens, "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1), "llm_only_step_s": round(llm_s, 4),
        "ratio_vs_llm_only": round(step_s / llm_s, 2), "peak_rss_mb": round(peak_rss, 1),
        "rss_before_steps_mb": round(rss_before, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_cuda(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = args.device or "cuda"
    on_cuda = device.startswith("cuda")
    model, processor, config = _build(args.preset, device, args.llm_layers)
    batch = _batch(processor, samples=args.micro_batch, frames=args.frames, size=config.image_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=on_cuda)
    dtype = torch.bfloat16 if on_cuda else torch.float32

    def autocast():
        return torch.autocast(device_type="cuda" if on_cuda else "cpu", dtype=dtype, enabled=on_cuda)

    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    step = _step_fn(model, batch, optimizer, autocast)
    step()  # warm-up (allocator, kernels, the optimizer's state)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    step()
    sync()
    peak_memory = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step_s, llm_s = _paired_times(step, _llm_only_step(model, batch, 1e-5, autocast), args.steps, sync)
    tokens = int(batch["attention_mask"].sum())
    name = torch.cuda.get_device_name() if on_cuda else "cpu"
    peak = peak_bf16(name, args.peak_tflops)
    preset = "tiny" if args.preset == "tiny" else f"siglip-so400m + qwen2-{args.preset}-shaped"
    return {
        "benchmark": "train_step", "device": name, "preset": f"{preset}, stage 3",
        "attn_implementation": config._attn_implementation, "frames": args.frames,
        "micro_batch": args.micro_batch, "tokens_per_step": tokens, "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1), "flops_per_step": flops,
        "mfu": round(flops / step_s / peak, 4) if peak else None,
        "llm_only_step_s": round(llm_s, 4), "ratio_vs_llm_only": round(step_s / llm_s, 2),
        "peak_gpu_memory_gb": round(peak_memory, 2) if peak_memory is not None else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuda", action="store_true", help="the Qwen2-1.5B-shaped stage-3 step on a GPU")
    parser.add_argument("--preset", choices=("1.5b", "0.5b", "tiny"), default="1.5b",
                        help="with --cuda: the LLM's shape (tiny: the tiny preset, for dry runs)")
    parser.add_argument("--device", default=None, help="with --cuda: another device (cpu checks the code path)")
    parser.add_argument("--llm-layers", type=int, default=None, help="with --cuda: fewer LLM layers (smoke runs)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory():
        result = run_cuda(args) if args.cuda else run_cpu(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
