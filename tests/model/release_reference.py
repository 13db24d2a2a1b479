"""REFERENCE code transcribed from the release (DAMO-NLP-SG/VideoRefer, commit cbd4207), for parity tests only.

Each function names the release file it comes from. The maths and control flow are the release's; only debugging
statements (`print`, `pdb`) and unused branches (the 'pad' aspect ratio, which the release's evaluation does not
use) are left out. Our code is tested against these, never against itself.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as maskUtils  # noqa: N812 - the release's spelling

# The Qwen2-7B-Instruct chat template (its tokenizer_config.json), which the release's `mm_infer` renders.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MODAL_INDEX_MAP = {"<image>": -200, "<video>": -201, "<audio>": -202}  # videorefer/constants.py


def token_merge(x: torch.Tensor, r: int) -> torch.Tensor:
    """videorefer/model/layer.py `token_merge`: x [bs, n, d], r = number of tokens to remove."""
    x1 = x[:, :-1, :]
    x2 = x[:, 1:, :]
    norm_x1 = F.normalize(x1, p=2, dim=-1)
    norm_x2 = F.normalize(x2, p=2, dim=-1)
    sim = torch.sum(norm_x1 * norm_x2, dim=-1)

    values, indices = torch.topk(sim.flatten(), r)
    kth_largest = values[-1]

    new_tokens = []
    merged_tokens = []
    for i in range(sim.shape[1]):
        merged_tokens.append(x[:, i : i + 1, :])
        if sim[0, i] < kth_largest and len(merged_tokens) > 0:
            new_tokens.append(torch.mean(torch.cat(merged_tokens, dim=1), dim=1, keepdim=True))
            merged_tokens = []

    merged_tokens.append(x[:, sim.shape[1] : sim.shape[1] + 1, :])
    if len(merged_tokens) > 0:
        new_tokens.append(torch.mean(torch.cat(merged_tokens, dim=1), dim=1, keepdim=True))

    return torch.cat(new_tokens, dim=1)


def mask_pooling(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """videorefer/model/layer.py `MaskPooling.forward`: x [n, c, h, w], mask [1, n, H, W]."""
    if x.shape[-2:] != mask.shape[-2:]:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
    mask = (mask > 0).to(mask.dtype)
    mask = mask.permute(1, 0, 2, 3)
    denorm = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    return (x * mask / denorm).sum(-1).sum(-1)


def mask_extractor_forward(feat_linear, feats, masks, ann_indices, region_token_num=4):
    """videorefer/model/layer.py `MaskExtractor.forward` with image_aspect_ratio 'square' (the evaluation's).

    feats [F, N*N, C] (vision features of the mask frames), masks: a list per sample of [M, H, W] tensors,
    ann_indices: per sample, per object, the rows of `feats` its masks lie on.
    """
    query_feats = []
    num_imgs = len(masks)
    region_token_nums = []
    for idx in range(num_imgs):
        mask = masks[idx].unsqueeze(0).float()
        ann_index = []
        for index in ann_indices[idx]:
            for id_ in index:
                ann_index.append(id_)
        feat = feats[ann_index]
        N = int(pow(feat.shape[1], 0.5))  # noqa: N806
        feat = feat.reshape(feat.shape[0], N, N, -1).permute(0, 3, 1, 2)
        raw_dtype = feat.dtype
        feat = feat.to(mask.dtype)
        mask_feat_raw = mask_pooling(feat, mask)
        merged_mask_feats = []
        start_index = 0
        for index in ann_indices[idx]:
            mask_feat = mask_feat_raw[start_index : start_index + len(index), :].unsqueeze(0)
            if mask_feat.shape[1] > region_token_num:
                mask_feat = token_merge(mask_feat, mask_feat.shape[1] - region_token_num)
            region_token_nums.append(mask_feat.shape[1])
            merged_mask_feats.append(mask_feat)
            start_index += len(index)
        mask_feats = torch.cat(merged_mask_feats, dim=1)
        mask_feats = mask_feats.reshape(-1, mask_feat_raw.shape[-1])
        mask_feats = mask_feats.to(raw_dtype)
        query_feats.append(mask_feats)
    mask_feats = torch.cat(query_feats, dim=0)
    return feat_linear(mask_feats), region_token_nums


def ann_to_mask(mask_ann, h=None, w=None):
    """videorefer/eval/inference_videorefer_q_bench.py `annToMask`."""
    if isinstance(mask_ann, list):
        rles = maskUtils.frPyObjects(mask_ann, h, w)
        rle = maskUtils.merge(rles)
    elif isinstance(mask_ann["counts"], list):
        rle = maskUtils.frPyObjects(mask_ann, h, w)
    else:
        rle = mask_ann
    return maskUtils.decode(rle)


def bench_item_masks(annotations, mode, frame_idx, height, width):
    """videorefer/eval/inference_videorefer_q_bench.py `VideoRefer_Bench_Q.__getitem__`, the annotation part.

    Returns (ann_indices, frame_nums, all_frames, masks [M, H, W]) as the release passes them to `mm_infer`.
    """
    if mode == "single":
        frame_idx = str(frame_idx)
        annotations = [{frame_idx: ann[frame_idx]} for ann in annotations]
    ann_indices = []
    all_frames = set()
    for ann in annotations:
        all_frames.update(list(ann.keys()))
    all_frames = list(all_frames)
    frame_nums = len(all_frames)
    for ann in annotations:
        ann_indices.append([all_frames.index(frame) for frame in ann])
    all_frames = [int(f) for f in all_frames]
    masks = []
    for anns in annotations:
        for ann_idx in anns:
            if anns[ann_idx]["segmentation"] is None:
                masks.append(np.zeros((height, width)))
            else:
                masks.append(ann_to_mask(anns[ann_idx]["segmentation"], height, width))
    return [ann_indices], [frame_nums], all_frames, torch.Tensor(np.array(masks))


def mm_infer_prompt_ids(instruct: str, tokenizer, modal: str = "video") -> list[int]:
    """videorefer/__init__.py `mm_infer` (steps 1-2, model_type videorefer_qwen2: no system message) followed by
    videorefer/mm_utils.py `tokenizer_multimodal_token`."""
    modal_token = {"image": "<image>", "video": "<video>", "text": ""}[modal]
    message = [{"role": "user", "content": modal_token + "\n" + instruct}]
    prompt = tokenizer.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
    multimodal_token_index = MODAL_INDEX_MAP.get(modal_token)
    if multimodal_token_index is None:
        return tokenizer(prompt, add_special_tokens=False).input_ids
    prompt_chunks = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in prompt.split(modal_token)]
    input_ids = []
    for i in range(1, 2 * len(prompt_chunks)):
        if i % 2 == 1:
            input_ids.extend(prompt_chunks[i // 2])
        else:
            input_ids.append(multimodal_token_index)
    return input_ids


def bench_q_question(question: str, options: list[str]) -> str:
    """videorefer/eval/inference_videorefer_q_bench.py: the Bench-Q instruction."""
    question = question.replace("<region>", "[<region>]")
    return question + " " + " ".join(options) + ". Answer with the option's letter from the given choices directly."
