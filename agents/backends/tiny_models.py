"""Tiny random models built offline and saved to a directory, so the real local backends load them from disk.

This machine class has no model hub, so tests and CPU demos exercise `LocalChatBackend` and
`GroundingDinoGrounder` through models built here from configs with random weights (they produce garbage
text and boxes; what they test is the plumbing). Tokenizers are trained with the `tokenizers` library on a
small built-in corpus. What was found about transformers 5.23 without torchvision:
  * text: `Qwen2ForCausalLM` with a byte-level BPE tokenizer and a ChatML chat template loads through
    `AutoModelForCausalLM` / `AutoTokenizer`.
  * vision: LLaVA (`LlavaForConditionalGeneration`, a SigLIP vision tower and a Qwen2 text model) loads through
    `AutoModelForImageTextToText` / `AutoProcessor`. Transformers 5 ships each image processor in a
    torchvision backend and a PIL backend; with torchvision absent `AutoProcessor` falls back to the PIL one
    (`LlavaImageProcessorPil`), which is also the class saved here. Qwen2-VL was not chosen: its processor
    also carries a video processor, and its tiny config needs matching rope sections and merge sizes.
  * Grounding DINO: `GroundingDinoForObjectDetection` with a tiny Swin backbone (transformers' own, no timm),
    a tiny BERT text encoder, `d_model` divisible by 32 (GroupNorm) and `decoder_layers >= 2`;
    `GroundingDinoImageProcessorPil` plus a BERT WordPiece tokenizer trained here.
Every builder is deterministic (seeded weights, fixed corpus) and returns early when the directory already
holds a finished build (a `.complete` marker written last), so tests can share one build per session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Enough text for a BPE/WordPiece vocabulary that covers the engine's prompts and JSON punctuation.
CORPUS = (
    "a dog runs across the park and jumps over a red ball",
    "the red ball rolls to the left while a blue box slides to the right",
    "describe the appearance and the motion of the object in the video",
    "is the masked object the same object as the one described? answer yes or no",
    "a yellow star floats upwards; a green car drives downwards; a purple kite glides",
    '{"subject": "dog", "others": ["ball", "box"], "appearance": "brown fur", "motion": "runs"}',
    "question: what does the person hold? answer: a cup of coffee. options: a, b, c, d.",
    "the man in a white shirt walks towards the camera and waves his hand",
    "0 1 2 3 4 5 6 7 8 9 , . : ; ! ? ' \" ( ) [ ] { } < > - _ / = + * # @ & %",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")
_BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_MARKER = ".complete"


def build_tiny_text_model(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A ~100k-parameter Qwen2 causal LM with a trained BPE tokenizer and a ChatML chat template."""

    def build(target: Path) -> None:
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tokenizer = _chat_tokenizer()
        tokenizer.save_pretrained(target)
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(_qwen2_config(Qwen2Config, tokenizer))
        model.save_pretrained(target)

    return _build_once(directory, build)


def build_tiny_vision_model(directory: str | os.PathLike[str], *, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny LLaVA (SigLIP vision tower + Qwen2) with its processor: `<image>` expands to (size/8)^2 tokens."""

    def build(target: Path) -> None:
        import torch
        from transformers import (
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
            Qwen2Config,
            SiglipVisionConfig,
        )
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        tokenizer = _chat_tokenizer()
        patch_size = 8
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size,
        )
        config = LlavaConfig(
            vision_config=vision,
            text_config=_qwen2_config(Qwen2Config, tokenizer, max_positions=1024),
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        torch.manual_seed(seed)
        LlavaForConditionalGeneration(config).save_pretrained(target)
        image_processor = LlavaImageProcessorPil(
            size={"height": image_size, "width": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=False,
            do_pad=False,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
            chat_template=CHAT_TEMPLATE,
            image_token="<image>",
        )
        processor.save_pretrained(target)

    return _build_once(directory, build)


def build_tiny_grounding_dino(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A ~160k-parameter Grounding DINO (tiny Swin + tiny BERT) with its processor and a WordPiece tokenizer."""

    def build(target: Path) -> None:
        import torch
        from transformers import (
            BertConfig,
            GroundingDinoConfig,
            GroundingDinoForObjectDetection,
            GroundingDinoProcessor,
            SwinConfig,
        )
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil,
        )

        tokenizer = _bert_tokenizer()
        backbone = SwinConfig(
            embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4, image_size=64,
            patch_size=4, out_indices=[2, 3, 4],
        )
        text = BertConfig(
            vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64,
        )
        config = GroundingDinoConfig(
            backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
            num_queries=20, max_text_len=32, encoder_n_points=2, decoder_n_points=2,
        )
        torch.manual_seed(seed)
        GroundingDinoForObjectDetection(config).save_pretrained(target)
        image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
        GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)

    return _build_once(directory, build)


# Tiny SAM 2 video model: SAM 2.1's heads (hidden size 256, as the release hard-codes them) on a Hiera trunk
# of width 16 with 5 blocks (SAM 2.1 tiny: 96 wide, 12 blocks). The same architecture is built in the sam2 package by
# tests/agents/backends/test_sam2_equality.py (its hydra overrides name the same numbers).
TINY_HIERA = {
    "hidden_size": 16,
    "embed_dim_per_stage": [16, 32, 64, 128],
    "num_attention_heads_per_stage": [1, 2, 4, 8],
    "blocks_per_stage": [1, 1, 2, 1],
    "global_attention_blocks": [3],  # never a stage's first block (pooled: it needs a window)
    "window_size_per_stage": [8, 4, 4, 2],
    "window_positional_embedding_background_size": [7, 7],
}


def tiny_sam2_video_config(image_size: int = 128) -> Any:
    """The `Sam2VideoConfig` of the tiny random SAM 2 (input `image_size` square, a multiple of 32)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    if image_size % 32:
        raise ValueError(f"the tiny SAM 2's image_size must be a multiple of 32, got {image_size}")
    trunk = Sam2HieraDetConfig(image_size=[image_size, image_size], **TINY_HIERA)
    vision = Sam2VisionConfig(
        backbone_config=trunk,
        backbone_channel_list=list(reversed(TINY_HIERA["embed_dim_per_stage"])),
        backbone_feature_sizes=[[image_size // stride] * 2 for stride in (4, 8, 16)],
    )
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"image_size": image_size},
        image_size=image_size,
        memory_attention_rope_feat_sizes=[image_size // 16, image_size // 16],
    )


def build_tiny_sam2_video(directory: str | os.PathLike[str], *, seed: int = 0, image_size: int = 128) -> Path:
    """A tiny random `Sam2VideoModel` (about 7M parameters, mostly SAM 2.1's heads) saved with its config."""

    def build(target: Path) -> None:
        import torch
        from transformers import Sam2VideoModel

        torch.manual_seed(seed)
        Sam2VideoModel(tiny_sam2_video_config(image_size)).save_pretrained(target)

    return _build_once(directory, build)


def build_tiny_sam3_video(directory: str | os.PathLike[str], *, seed: int = 0, image_size: int = 112) -> Path:
    """A tiny random `Sam3VideoModel` (ViT detector + CLIP text encoder + SAM 2-style tracker) with a BPE tokenizer
    trained here; detection thresholds are lowered and the tracker's object-presence bias raised, so that random
    weights find (meaningless) instances and keep tracking them."""

    def build(target: Path) -> None:
        import torch
        from transformers import Sam3VideoConfig, Sam3VideoModel

        tokenizer = _clip_like_tokenizer()
        patch = 14
        if image_size % (patch * 4):
            raise ValueError(f"the tiny SAM 3's image_size must be a multiple of {patch * 4}, got {image_size}")
        grid = image_size // patch
        detector = {
            "vision_config": {
                "model_type": "sam3_vision_model",
                "backbone_config": {
                    "model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "image_size": image_size, "patch_size": patch, "window_size": grid // 2,
                    "global_attn_indexes": [1], "pretrain_image_size": image_size,
                },
                "fpn_hidden_size": 256,
                "scale_factors": [4.0, 2.0, 1.0, 0.5],
                "backbone_feature_sizes": [[grid * 4] * 2, [grid * 2] * 2, [grid] * 2],
            },
            "text_config": {
                "model_type": "clip_text_model", "vocab_size": len(tokenizer), "hidden_size": 32,
                "intermediate_size": 64, "projection_dim": 32,
                "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 32,
            },
            "geometry_encoder_config": {"num_layers": 1, "intermediate_size": 64},
            "detr_encoder_config": {"num_layers": 1, "intermediate_size": 64},
            "detr_decoder_config": {"num_layers": 1, "num_queries": 4, "intermediate_size": 64},
            "mask_decoder_config": {"num_upsampling_stages": 3},
        }
        tracker = {
            "vision_config": detector["vision_config"],
            "prompt_encoder_config": {"image_size": image_size, "patch_size": patch},
            "image_size": image_size,
            "memory_attention_rope_feat_sizes": [grid, grid],
        }
        config = Sam3VideoConfig(
            detector_config={"model_type": "sam3", **detector},
            tracker_config={"model_type": "sam3_tracker_video", **tracker},
            low_res_mask_size=grid * 4,
            score_threshold_detection=0.2, new_det_thresh=0.3, hotstart_delay=0,
        )
        torch.manual_seed(seed)
        model = Sam3VideoModel(config)
        with torch.no_grad():  # random heads call every tracked instance gone after its first frame: say "present"
            model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(5.0)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    return _build_once(directory, build)


# ---------------------------------------------------------------- helpers


def _build_once(directory: str | os.PathLike[str], build: Callable[[Path], None]) -> Path:
    """Run `build` into a temporary sibling folder and rename it into place, so a killed build leaves nothing."""
    target = Path(directory)
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _quietly(build, staging)
        (staging / _MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _quietly(build: Callable[[Path], None], target: Path) -> None:
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        build(target)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _chat_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(_CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _clip_like_tokenizer() -> Any:
    """A byte-level BPE tokenizer with CLIP's start/end tokens (padding with the end token), for the tiny SAM 3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    start, end = (tokenizer.token_to_id(token) for token in specials)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[(specials[0], start), (specials[1], end)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[1], model_max_length=32)


def _bert_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=list(_BERT_SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _qwen2_config(config_class: Any, tokenizer: Any, *, max_positions: int = 512) -> Any:
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
