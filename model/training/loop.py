"""The training loop of one stage, launched by torchrun (`python -m torch.distributed.run -m model.training.loop`).

One readable loop: set up the process group (NCCL on GPU, gloo on CPU), load the model and processor (from the
previous stage's directory, or a random tiny model), freeze all but the recipe's module groups, shard with FSDP2
(`fully_shard` per decoder layer and at the root; bf16 parameters with fp32 gradient reduction on GPU; FSDP2 also
runs on CPU/gloo too, so a multi-process CPU run takes the same path; a single process is left unwrapped
unless the recipe's `fsdp_single_process` asks for a one-process group, the multi-GPU path on one device), then
step: per optimizer step each process runs `accumulation_steps` micro-batches, the loss is the sum
of token losses divided by the assistant tokens of the whole global batch (so 1 process x 2 micro-batches and 2
processes x 1 micro-batch compute the same thing), gradients are clipped, AdamW and a warmup + cosine schedule
step. Every `checkpoint_every` steps and at the end a distributed checkpoint (model, optimizer, scheduler, RNG, data
position) is written; `--resume` continues from the last one exactly. Logs go to `<out>/log.jsonl` (and a rich
progress bar on a TTY); bad samples to `<out>/rejects-rank-R.jsonl`; the trained model and processor to
`<out>/model` (save_pretrained), which the next stage's `--init-from` and `videorefer infer` load. Run as a
process (`-m model.training.loop`), it shows each distinct warning at most once (`warn_once_per_run`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from engine.errors import ConfigError
from model.training import checkpointing
from model.training.loader import (
    LoaderSpec,
    LoaderState,
    TrainingStream,
    build_loader,
    count_samples,
    expand_shards,
)
from model.training.recipes import TrainingRecipe, get_recipe

LOGGER = logging.getLogger("model.training")
FINAL_DIR = "model"
IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """Where this process runs: rank, world size, device and compute dtype."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype
    sharded: bool = False  # FSDP2 wraps the model: several processes, or `fsdp_single_process`

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------- setup


def setup_runtime(recipe: TrainingRecipe) -> Runtime:
    """Join the torchrun process group when there is one; pick the device and the precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    sharded = world_size > 1 or recipe.fsdp_single_process
    if sharded and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError("fsdp_single_process needs a process group: launch with torchrun (videorefer train)")
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    precision = recipe.precision if recipe.precision != "auto" else ("bf16" if cuda else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return Runtime(rank=rank, local_rank=local_rank, world_size=world_size, device=device, dtype=dtype,
                   sharded=sharded)


def resolve_model_dir(path: str | Path) -> Path:
    """A save_pretrained directory: `path` itself, or `<path>/model` when `path` is a previous stage's output."""
    path = Path(path)
    if (path / FINAL_DIR / "config.json").is_file():
        return path / FINAL_DIR
    if (path / "config.json").is_file():
        return path
    raise ConfigError(f"--init-from {path}: no save_pretrained model there (no config.json)")


def load_model_and_processor(recipe: TrainingRecipe, out: Path, runtime: Runtime) -> tuple[Any, Any, Any]:
    """The model (fp32 master weights, on the device), processor and generation config this stage starts from.

    From `recipe.init_from` when set; otherwise a random model of `recipe.model_preset`, which only the `tiny`
    preset allows (a full-size stage without weights to start from is a config error, not a week of compute).
    """
    from model.generation import load_generation_config
    from model.modeling import VideoReferForCausalLM, default_attn_implementation
    from model.processing import VideoReferProcessor

    if recipe.init_from:
        source = resolve_model_dir(recipe.init_from)
    elif recipe.model_preset == "tiny":
        from model.inference import save_tiny_model

        source = out / "init"
        if runtime.is_main and not (source / "config.json").is_file():
            save_tiny_model(source, seed=recipe.seed)
        if runtime.world_size > 1:
            dist.barrier()
    else:
        raise ConfigError(
            f"recipe {recipe.name} needs --init-from: the previous stage's output (stage 1: a base model directory)"
        )
    # flash-attention 2 on CUDA when installed, SDPA otherwise; fp32 master weights (FSDP casts to bf16 on GPU).
    model = VideoReferForCausalLM.from_pretrained(
        source, dtype=torch.float32, attn_implementation=default_attn_implementation(runtime.device)
    )
    processor = VideoReferProcessor.from_pretrained(source)
    return model.to(runtime.device), processor, load_generation_config(source, processor)


def parameter_groups(model: Any, trainable: frozenset[str]) -> dict[str, list[str]]:
    """Parameter names per trainable module group, asking the model's own freeze helper one group at a time."""
    from model.modeling import set_trainable

    groups: dict[str, list[str]] = {}
    for group in sorted(trainable):
        set_trainable(model, {group})
        groups[group] = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    set_trainable(model, set(trainable))
    claimed = [name for names in groups.values() for name in names]
    if len(claimed) != len(set(claimed)):
        raise ConfigError("module groups overlap: a parameter belongs to two groups")
    if not claimed:
        raise ConfigError(f"recipe trains {sorted(trainable)} but no parameter of the model is in them")
    return groups


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant), under transformers 5's name for it.

    `gradient_checkpointing_enable` still works there but warns that it is deprecated; the new name is used when
    the installed transformers has it.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def warn_once_per_run() -> None:
    """Show each distinct warning (category and text) at most once in this process, wherever it is raised.

    Python's filters show a warning once per code location, but forget what they showed whenever any library
    changes the filters (every registry, the "once" one included, is cleared then), so a warning raised inside the
    step comes back every few steps. This wraps `warnings.showwarning`, which runs after the filters: what the
    filters hide stays hidden, and a user's `-W` / PYTHONWARNINGS choice is left alone.
    """
    import warnings

    if sys.warnoptions:
        return
    shown: set[tuple[type, str]] = set()
    show = warnings.showwarning

    def show_once(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_once


def shard_model(model: Any, runtime: Runtime) -> Any:
    """FSDP2 across processes: one unit per transformer layer (LLM and vision tower), then the root.

    Frozen units hold no gradients, so FSDP never reduces anything for them; their parameters are still sharded,
    which is what lets a 7B LLM plus a 400M vision tower fit. A single process is left as it is unless
    `runtime.sharded` (the recipe's `fsdp_single_process`).
    """
    if not runtime.sharded:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if runtime.dtype == torch.bfloat16
        else MixedPrecisionPolicy()
    )
    for module in list(model.modules()):
        if type(module).__name__.endswith(("DecoderLayer", "EncoderLayer")):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def build_optimizer(model: Any, recipe: TrainingRecipe, groups: dict[str, list[str]]) -> torch.optim.Optimizer:
    named = dict(model.named_parameters())
    param_groups = [
        {"params": [named[name] for name in names], "lr": recipe.learning_rates[group], "name": group}
        for group, names in groups.items()
        if names
    ]
    return torch.optim.AdamW(param_groups, betas=recipe.adam_betas, weight_decay=recipe.weight_decay,
                             foreach=False)


def lr_factor(step: int, *, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """Linear warmup over the first `warmup_ratio` of the steps, then cosine decay to `min_ratio`."""
    warmup = math.ceil(total_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def total_steps(recipe: TrainingRecipe) -> int:
    """`max_steps` when the recipe sets it, else `epochs` over all shards' samples at the global batch."""
    if recipe.max_steps is not None:
        return recipe.max_steps
    samples = sum(count_samples(expand_shards(source.shards)) for source in recipe.data.sources)
    return max(1, math.ceil(recipe.epochs * samples / recipe.global_batch))


def _apply_schedule(optimizer: Any, scheduler: Any, step: int) -> None:
    """Set every parameter group's learning rate from the current schedule at `step`."""
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler.last_epoch = step
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ---------------------------------------------------------------- logging


class RunLog:
    """JSON lines in `<out>/log.jsonl` (main process) and a rich progress bar when stdout is a TTY."""

    def __init__(self, out: Path, *, enabled: bool, total: int, start: int) -> None:
        self.path = out / "log.jsonl"
        self.enabled = enabled
        self.progress = None
        if not enabled:
            return
        self._truncate_after(start)
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeRemainingColumn())
            self.task = self.progress.add_task("train", total=total, completed=start, status="")
            self.progress.start()

    def _truncate_after(self, step: int) -> None:
        # A resumed run rewrites the steps after its checkpoint: keep the log one line per step.
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text("".join(f"{line}\n" for line in kept))
        os.replace(temporary, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"],
                                 status=f"loss {record['loss']:.4f} lr {record['lr']:.2e}")
        else:
            print(json.dumps(record), flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


# ---------------------------------------------------------------- the loop


def _micro_batches(loader: Any, count: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(loader)
    while True:
        yield [next(iterator) for _ in range(count)]


def _label_tokens(batch: dict[str, Any]) -> torch.Tensor:
    labels = batch["labels"]
    # Causal LM loss predicts token t+1 from t: the first position never counts.
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def _all_reduce(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.world_size > 1:
        dist.all_reduce(value)
    return value


# What a run leaves in its `--out` folder (another run there must resume it or start over explicitly).
RUN_OUTPUTS = ("log.jsonl", "recipe.json", "checkpoints", FINAL_DIR)


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one `--out`: a folder holding a run needs `--resume` or `--overwrite`.

    With `overwrite` the earlier run's outputs are removed first (main process only).
    """
    found = [name for name in RUN_OUTPUTS if (out / name).exists()] + [p.name for p in out.glob("rejects-rank-*")]
    if not found or resume:
        return
    if not overwrite:
        raise ConfigError(
            f"{out} already holds a training run ({', '.join(sorted(found))}); pass --resume to continue it or "
            "--overwrite to start over"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        import shutil

        for name in found:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def train(recipe: TrainingRecipe, out: Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run one stage to its last step and return a summary; every process of the torchrun group calls this.

    The warmup + cosine schedule always spans the current `total_steps(recipe)`: a run resumed with a larger
    `max_steps` continues from the checkpoint's step on the schedule stretched to the new end (its learning rate is
    set from that schedule at the resumed step; the optimizer's stored one belongs to the old end).
    """
    check_out(out, resume=resume, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    runtime = setup_runtime(recipe)
    torch.manual_seed(recipe.seed)
    accumulation = recipe.accumulation_steps(runtime.world_size)
    steps = total_steps(recipe)

    model, processor, generation_config = load_model_and_processor(recipe, out, runtime)
    if hasattr(processor, "max_length"):
        processor.max_length = recipe.max_length
    groups = parameter_groups(model, recipe.trainable)
    if recipe.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    model = shard_model(model, runtime)
    optimizer = build_optimizer(model, recipe, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=steps, warmup_ratio=recipe.warmup_ratio,
                               min_ratio=recipe.min_lr_ratio),
    )

    start_step, loader_state = 0, LoaderState()
    latest = checkpointing.latest_checkpoint(out) if resume else None
    if latest is not None:
        restored = checkpointing.load_checkpoint(latest, model=model, optimizer=optimizer, rank=runtime.rank,
                                                 world_size=runtime.world_size)
        scheduler.load_state_dict({**scheduler.state_dict(), **restored.scheduler})
        start_step, loader_state = restored.step, LoaderState.from_json(restored.loader)
        _apply_schedule(optimizer, scheduler, start_step)
    elif runtime.is_main:
        checkpointing.write_json_atomic(out / "recipe.json", recipe.to_json())

    spec = LoaderSpec(mixture=recipe.data, micro_batch=recipe.micro_batch, seed=recipe.seed, rank=runtime.rank,
                      world_size=runtime.world_size, num_workers=recipe.num_workers)
    # Frames leave the loader's workers as uint8 (a quarter of float32's bytes) and are normalised on the device.
    # On a GPU their stretch to the vision size runs on the device too (bit-identical to Pillow); on CPU it stays
    # in the loader's workers, where it overlaps the step instead of adding to it.
    encoder = processor.replace(do_resize=runtime.device.type == "cpu", do_normalize=False)
    stream = TrainingStream(spec, encoder, state=loader_state)
    batches = _micro_batches(build_loader(stream), accumulation)
    log = RunLog(out, enabled=runtime.is_main, total=steps, start=start_step)
    rejects_path = out / f"rejects-rank-{runtime.rank}.jsonl"
    bad_total = 0
    last_loss = float("nan")
    meta = {"recipe": recipe.name, "total_steps": steps}

    for step in range(start_step, steps):
        started = time.perf_counter()
        micro = next(batches)
        tokens = torch.stack([_label_tokens(item["batch"]) for item in micro]).sum().to(runtime.device)
        global_tokens = _all_reduce(tokens.clone().float(), runtime).clamp(min=1.0)
        loss_sum = torch.zeros((), device=runtime.device)
        for index, item in enumerate(micro):
            loader_state = loader_state.advanced(item["worker"], _position(item))
            bad_total += _record_bad(rejects_path, item["bad"], step)
            batch = {key: value.to(runtime.device, non_blocking=True) if torch.is_tensor(value) else value
                     for key, value in item["batch"].items()}
            batch["pixel_values"] = processor.normalize_pixels(batch["pixel_values"])
            last_micro = index == len(micro) - 1
            if hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(last_micro)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                        if runtime.dtype == torch.bfloat16 and not runtime.sharded else contextlib.nullcontext())
            with autocast:
                output = model(**batch, use_cache=False)  # no KV cache in training (checkpointing warns otherwise)
            micro_tokens = _label_tokens(batch)
            # A micro-batch whose answers were all cut by max_length has a NaN mean loss and no tokens.
            token_loss_sum = torch.nan_to_num(output.loss.float()) * micro_tokens
            # FSDP averages gradients over processes; scale by world size so the result is sum / global tokens.
            (token_loss_sum * runtime.world_size / global_tokens).backward()
            loss_sum += token_loss_sum.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], recipe.max_grad_norm
        )
        lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}  # the rates this step used
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        last_loss = float(_all_reduce(loss_sum, runtime) / global_tokens)
        input_tokens = _all_reduce(
            torch.stack([item["batch"]["attention_mask"].sum() for item in micro]).sum().to(runtime.device), runtime
        )
        elapsed = time.perf_counter() - started
        if runtime.is_main and ((step + 1) % recipe.log_every == 0 or step + 1 == steps):
            log.write({
                "step": step + 1, "loss": last_loss, "lr": max(lrs.values()), "lrs": lrs,
                "grad_norm": float(_full(grad_norm)), "tokens": int(input_tokens),
                "label_tokens": int(global_tokens), "tokens_per_s": float(input_tokens) / elapsed,
                "samples_per_s": recipe.global_batch / elapsed, "step_s": elapsed, "bad_samples": bad_total,
            })
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            checkpointing.save_checkpoint(
                out, step=step + 1, model=model, optimizer=optimizer, scheduler=scheduler,
                loader_state=loader_state.to_json(), meta=meta, rank=runtime.rank,
                world_size=runtime.world_size, keep=recipe.keep_checkpoints)
    log.close()
    save_final(model, processor, out / FINAL_DIR, runtime, generation_config)
    if runtime.sharded:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": steps, "loss": last_loss, "bad_samples": bad_total, "model_dir": str(out / FINAL_DIR),
            "device": runtime.device.type, "fsdp": runtime.sharded}


def _position(item: dict[str, Any]) -> Any:
    from model.training.loader import SlotPosition

    return SlotPosition.from_json(item["position"])


def _record_bad(path: Path, records: Sequence[dict[str, str]], step: int) -> int:
    if not records:
        return 0
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps({**record, "step": step + 1}) + "\n")
    return len(records)


def _full(value: torch.Tensor) -> torch.Tensor:
    # clip_grad_norm_ over DTensors returns a DTensor; its full value is what we log.
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def save_final(
    model: Any, processor: Any, directory: Path, runtime: Runtime, generation_config: Any = None
) -> None:
    """Gather the full weights to the main process and write a saved folder (model + processor + generation config).

    `generation_config` is the init folder's (carried over, e.g. a converted release's repetition penalty).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if runtime.sharded:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if not runtime.is_main:
        return
    staging = directory.with_name(directory.name + ".tmp")
    import shutil

    from model.checkpoint import save_model_folder

    shutil.rmtree(staging, ignore_errors=True)
    save_model_folder(model, processor, staging, generation_config=generation_config, state_dict=state,
                      card_name=f"{directory.parent.name}/{directory.name}")  # the run's name, not the staging's
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.training.loop", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help="recipe name (stage1, stage2, stage2_5, stage3, tiny_*)")
    parser.add_argument("--data", nargs="+", required=True, help="shard globs, optionally GLOB::WEIGHT")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--init-from", default=None, help="previous stage's output (or save_pretrained) directory")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint under --out")
    parser.add_argument("--overwrite", action="store_true", help="remove an earlier run in --out and start over")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe field (Python literal values), e.g. --set micro_batch=1")
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> TrainingRecipe:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = text
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.init_from is not None:
        overrides["init_from"] = str(args.init_from)
    return get_recipe(args.recipe, **overrides).with_data(args.data)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        recipe = recipe_from_args(args)
        summary = train(recipe, args.out, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr, flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"done": summary}), flush=True)
    return 0


if __name__ == "__main__":
    warn_once_per_run()
    sys.exit(main())
