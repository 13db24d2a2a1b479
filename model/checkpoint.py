"""Loading the RELEASED VideoRefer checkpoint layout (and its stage-2 / stage-1 partial files) into our model.

The release (PAPER.md "Released checkpoint layout") names the LLM as Qwen2 does (`model.layers.N...`,
`model.embed_tokens`, `model.norm`, `lm_head`), the connector `model.mm_projector.{s1,sampler.0,s2,readout.0,
readout.2}`, the object encoder `model.region_encoder.feat_linear.{0,2}`; the SigLIP tower ships separately
(`vision_model.*`, with `text_model.*` beside it in a full SigLIP checkpoint). `map_released_key` maps those names
onto ours (`language_model.*`, `connector.*`, `object_encoder.*`, `vision_tower.*`); weights are read from
safetensors or from `.bin` state dicts with `torch.load(weights_only=True)` (never unpickling code), single files
or sharded folders. `released_state_dict` is the inverse, for exporting and for tests; `convert_release` writes
released weights + SigLIP + tokenizer as one of our saved folders (model + processor).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError

# Released prefix -> our prefix. Order matters: the first match wins, so longer prefixes come first.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.mm_projector.", "connector."),
    ("mm_projector.", "connector."),
    ("model.region_encoder.", "object_encoder."),
    ("region_encoder.", "object_encoder."),
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("vision_model.", "vision_tower."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
# Parts of a full SigLIP checkpoint the vision tower does not use.
_IGNORED_PREFIXES = ("text_model.", "logit_scale", "logit_bias")
_GROUP_PREFIXES = {
    "vision": "vision_tower.",
    "connector": "connector.",
    "object_encoder": "object_encoder.",
    "llm": "language_model.",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    """What a load did: our parameter names filled, released keys not understood, and expected names not found."""

    loaded: tuple[str, ...]
    unexpected: tuple[str, ...]
    missing: tuple[str, ...]


def map_released_key(key: str) -> str | None:
    """Our state-dict name for a released key; None for keys that are deliberately ignored."""
    if key.startswith(_IGNORED_PREFIXES):
        return None
    for released, ours in _PREFIXES:
        if key.startswith(released):
            return ours + key[len(released) :]
    return key


def released_state_dict(model: nn.Module, groups: Iterable[str] = ("connector", "object_encoder", "llm")) -> dict:
    """Our weights under the released names (`model.mm_projector.*`, `model.region_encoder.*`, Qwen2 names)."""
    inverse = (
        ("connector.", "model.mm_projector."),
        ("object_encoder.", "model.region_encoder."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "vision_model."),
    )
    wanted = tuple(_GROUP_PREFIXES[group] for group in groups)
    out = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith(wanted):
            continue
        for ours, released in inverse:
            if name.startswith(ours):
                out[released + name[len(ours) :]] = tensor
                break
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of one `.safetensors` file, or of one `.bin`/`.pt` state dict (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path} does not hold a state dict")
    return dict(state)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file or folder (sharded via an `*.index.json`, or every weight file in it)."""
    path = Path(path)
    if path.is_file():
        return load_state_dict_file(path)
    if not path.is_dir():
        raise ConfigError(f"checkpoint not found: {path}")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            break
    else:
        files = sorted(p.name for p in path.glob("*.safetensors")) or sorted(p.name for p in path.glob("*.bin"))
    if not files:
        raise ConfigError(f"no weight files in {path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_state_dict_file(path / name))
    return state


def load_released_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    expect: Iterable[str] = (),
) -> LoadReport:
    """Copy released-layout tensors into `model`; `expect` names groups that must be complete (else ConfigError)."""
    report, mapped = _match(model.state_dict(), state, expect)
    model.load_state_dict(mapped, strict=False)
    return report


def _match(
    ours: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], expect: Iterable[str]
) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Released tensors under our names, checked against our shapes (works on a meta-device model's state)."""
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        name = map_released_key(key)
        if name is None:
            continue
        if name not in ours:
            unexpected.append(key)
            continue
        if tuple(ours[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint tensor {key} has shape {tuple(tensor.shape)}, model {name} has {tuple(ours[name].shape)}"
                " (wrong preset / vocabulary size?)"
            )
        mapped[name] = tensor
    wanted = tuple(_GROUP_PREFIXES[group] for group in expect)
    missing = tuple(sorted(name for name in ours if name.startswith(wanted) and name not in mapped)) if wanted else ()
    if missing:
        raise ConfigError(f"checkpoint lacks {len(missing)} weights of {sorted(expect)}, e.g. {missing[:3]}")
    report = LoadReport(loaded=tuple(sorted(mapped)), unexpected=tuple(sorted(unexpected)), missing=missing)
    return report, mapped


def load_released_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a released VideoRefer checkpoint (LLM + connector + object encoder) from a file or folder."""
    return load_released_weights(model, read_checkpoint(path), expect=("llm", "connector", "object_encoder"))


def load_partial(model: nn.Module, path: str | Path, group: str | None = None) -> LoadReport:
    """Load a partial file: stage-2 `region_encoder.bin` (object encoder) or stage-1 `mm_projector.bin` (connector).

    `group` defaults from the file name; that group must be complete in the file.
    """
    path = Path(path)
    if group is None:
        if "region_encoder" in path.name:
            group = "object_encoder"
        elif "mm_projector" in path.name:
            group = "connector"
        else:
            raise ConfigError(f"cannot tell which module {path.name} holds; pass group=")
    return load_released_weights(model, read_checkpoint(path), expect=(group,))


def load_vision_tower(model: nn.Module, path: str | Path) -> LoadReport:
    """Load SigLIP weights (`vision_model.*`, e.g. google/siglip-so400m-patch14-384) into the vision tower."""
    return load_released_weights(model, read_checkpoint(path), expect=("vision",))


def convert_release(
    checkpoint: str | Path,
    *,
    vision_tower: str | Path,
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    config: Any = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Turn released weights into a folder `VideoReferPipeline.from_pretrained` and training load directly.

    `checkpoint`: the released VideoRefer folder or file (LLM + connector + object encoder); `vision_tower`: the
    SigLIP weights; `tokenizer`: a folder with the Qwen2 tokenizer holding `<region>` (default: `checkpoint`);
    `config`: a `VideoReferConfig` (default: the 7b preset); `dtype`: None keeps the release's stored dtype (fp16
    for VideoRefer-7B), a dtype converts. The release folder's `generation_config.json` (repetition penalty, eos
    ids) is copied; without one a default is written. The output is written to a temporary folder beside
    `output_dir` and moved in last.
    """
    from transformers import AutoTokenizer
    from transformers.initialization import no_init_weights

    from model.configuration import preset
    from model.generation import load_generation_config
    from model.modeling import VideoReferForCausalLM
    from model.processing import VideoReferProcessor

    config = config if config is not None else preset("7b")
    released, siglip = read_checkpoint(checkpoint), read_checkpoint(vision_tower)
    # Check names and shapes on a weightless skeleton first: a wrong preset fails in seconds, not after
    # allocating billions of parameters.
    with torch.device("meta"):
        skeleton = VideoReferForCausalLM(config).state_dict()
    _match(skeleton, released, ("llm", "connector", "object_encoder"))
    _match(skeleton, siglip, ("vision",))
    dtype = dtype if dtype is not None else stored_dtype(released)
    with no_init_weights():  # every parameter is overwritten below
        model = VideoReferForCausalLM._from_config(config, dtype=dtype)
    load_released_weights(model, released, expect=("llm", "connector", "object_encoder"))
    load_released_weights(model, siglip, expect=("vision",))
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else Path(checkpoint)
    if tokenizer_dir.is_file():
        tokenizer_dir = tokenizer_dir.parent
    processor = VideoReferProcessor.from_config(AutoTokenizer.from_pretrained(str(tokenizer_dir)), config)
    if processor.region_token_id != config.region_token_id:
        raise ConfigError(
            f"tokenizer puts <region> at {processor.region_token_id}, the config expects {config.region_token_id}"
        )
    release_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    generation = load_generation_config(release_dir, processor)
    return save_model_folder(model, processor, output_dir, generation_config=generation)


# The released checkpoint's bases at the 7b preset (PAPER.md); a model of other widths names none.
_BASE_MODELS_7B = ("Qwen/Qwen2-7B-Instruct", "google/siglip-so400m-patch14-384")


def base_models(config: Any) -> list[str]:
    """The Hub ids this model's parts start from: Qwen2-7B-Instruct and SigLIP-so400m at the 7b preset's widths."""
    text, vision = config.text_config, config.vision_config
    if (text.hidden_size, text.num_hidden_layers, vision.hidden_size) == (3584, 28, 1152):
        return list(_BASE_MODELS_7B)
    return []


def model_card(config: Any, name: str, *, base_model: Sequence[str] | None = None) -> str:
    """A model card (`README.md`) for a saved folder: Hub metadata (YAML front matter), parts, and how to run it.

    `base_model` defaults to `base_models(config)`; a converted release passes its checkpoint's id.
    """
    import yaml

    vision, text = config.vision_config, config.text_config
    bases = list(base_model) if base_model is not None else base_models(config)
    metadata: dict[str, Any] = {
        "license": "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": "video-text-to-text",
        "tags": ["videorefer", "video-llm", "region-understanding", "custom_code"],
    }
    if bases:
        metadata["base_model"] = bases if len(bases) > 1 else bases[0]
    front_matter = yaml.safe_dump(metadata, sort_keys=True)
    return (
        f"---\n{front_matter}---\n\n"
        f"# {name}\n\nA VideoRefer model (SigLIP vision tower + STC connector + Qwen2 LLM + object encoder), saved by "
        "the VideoRefer suite.\n\n"
        f"- vision: SigLIP, {vision.image_size} px, patch {vision.patch_size}, width {vision.hidden_size}, "
        f"{vision.num_hidden_layers} layers (base: google/siglip-so400m-patch14-384 at the 7b preset)\n"
        f"- LLM: Qwen2, hidden {text.hidden_size}, {text.num_hidden_layers} layers, vocabulary {text.vocab_size} "
        f"(base: Qwen/Qwen2-7B-Instruct at the 7b preset); `<region>` = id {config.region_token_id}\n"
        f"- frames: {config.num_frames}; object tokens per object: up to {config.region_tokens_per_object}\n"
        "- stage and data: see `../recipe.json` and `../log.jsonl` when this folder was written by "
        "`videorefer train` (`<out>/model`)\n"
        "- decoding: `generation_config.json` (the pipeline applies the release's `mm_infer` defaults on top)\n\n"
        "## Use with plain transformers\n\n"
        "Needs torch, transformers and Pillow (pycocotools for COCO RLE masks); the folder carries its code.\n\n"
        "```python\nimport numpy as np\nfrom transformers import AutoModelForCausalLM, AutoProcessor\n\n"
        "processor = AutoProcessor.from_pretrained(\"THIS_FOLDER\", trust_remote_code=True)\n"
        "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\", trust_remote_code=True).eval()\n"
        f"frames = ...  # uint8 [{config.num_frames}, H, W, 3]: the clip's frames, sampled uniformly\n"
        "mask = ...    # bool [H, W]: the object on frame row 0\n"
        "inputs = processor(\"What is <region> doing?\", videos=frames, masks=[{0: mask}])\n"
        "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
        "print(processor.decode(output[0]))  # generate returns the new tokens only\n```\n\n"
        "## With the VideoRefer suite\n\n```bash\nvideorefer infer --model THIS_FOLDER --video clip.mp4 "
        "--masks masks.json --question \"What is <region> doing?\"\n```\n\n"
        "```python\nfrom model.inference import VideoReferPipeline\npipeline = "
        "VideoReferPipeline.from_pretrained(\"THIS_FOLDER\")\nanswer = pipeline.ask(video=\"clip.mp4\", "
        "masks=[{0: mask}], question=\"What is <region> doing?\")\n```\n"
    )


def stored_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype most of a checkpoint's parameters are stored in (fp16 for the released VideoRefer-7B)."""
    from collections import Counter

    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    if not counts:
        raise ConfigError("the checkpoint holds no floating-point tensors")
    return counts.most_common(1)[0][0]


def save_model_folder(
    model: Any, processor: Any, directory: str | Path, *, generation_config: Any = None, state_dict: Any = None,
    card_name: str | None = None,
) -> Path:
    """Write `model`, `processor` and a `generation_config.json` into `directory`, atomically per file.

    `generation_config` defaults to one that stops at `<|im_end|>` (`model.generation`); pass the source folder's
    to carry it over (a converted release, a fine-tuned model). `state_dict` replaces the model's own (gathered
    FSDP weights); `card_name` titles the model card (default: the folder's name). The folder also carries
    self-contained modeling files and an `auto_map` (`model.remote_code`), so
    `AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)` loads it without this package.
    Everything is written into a temporary folder beside `directory` first and moved in last, so a crash never
    leaves a half-written model where a loader would find it; other files already in `directory` are kept.
    """
    from model.generation import default_generation_config, save_generation_config
    from model.remote_code import write_remote_code

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(str(staging), state_dict=state_dict)
        write_remote_code(staging)  # config.json `auto_map` + modeling files: plain transformers loads the folder
        processor.save_pretrained(staging)
        save_generation_config(generation_config or default_generation_config(processor), staging)
        if not (directory / "README.md").is_file():
            (staging / "README.md").write_text(model_card(model.config, card_name or directory.name), encoding="utf-8")
        for path in staging.iterdir():  # safetensors writes 0600: a model folder is shared, make it readable
            path.chmod(0o644)
        directory.mkdir(exist_ok=True)
        for path in staging.iterdir():
            path.replace(directory / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
