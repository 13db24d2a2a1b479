"""REFERENCE code transcribed from the release's benchmark scripts (DAMO-NLP-SG/VideoRefer, commit cbd4207).

For parity tests only: each function names the file it comes from and keeps its logic (including its crashes);
printing is replaced by returning the figures. Our code is tested against these, never against itself.
"""

from __future__ import annotations

import re

import numpy as np


def eval_bench_q(data: list[dict]) -> tuple[dict[str, int], dict[str, int]]:
    """videorefer/eval/eval_videorefer_bench_q.py `main`: (all_sum, right_num) per type. Crashes on an empty pred."""
    all_sum = {}
    right_num = {}
    for d in data:
        gt = d["Answer"]
        match = re.search(r"\(([A-Z])\)", gt)
        if match:
            gt = match.group(1)
        match = re.search(r"\(([A-Z])\)", d["pred"])
        if match:
            answer = match.group(1)
        else:
            match = re.search(r"([A-Z])\)", d["pred"])
            answer = match.group(1) if match else d["pred"].replace(".", "")[0]
        if d["type"] not in all_sum:
            all_sum[d["type"]] = 0
            right_num[d["type"]] = 0
        if answer.lower() == gt.lower():
            right_num[d["type"]] += 1
        all_sum[d["type"]] += 1
    return all_sum, right_num


def extract_re(data: list[dict]) -> tuple[list[dict], int]:
    """videorefer/eval/videorefer_bench_d/2.extract_re.py: the items with their scores added, and the error count."""
    final_data = []
    err = 0
    for d in data:
        try:
            input_string = d["gpt"]
            pattern = r"\d+\.\s+(.*?):\s+([\d.]+)"
            matches = re.findall(pattern, input_string)
            result_dict = {description: float(score) for description, score in matches}
            final_data.append(dict(d, **result_dict))
        except Exception:  # noqa: BLE001 - the release's bare except
            err += 1
    return final_data, err


def analyze_score(data: list[dict]) -> tuple[dict[str, float], float]:
    """videorefer/eval/videorefer_bench_d/3.analyze_score.py: mean per dimension and the overall (score_all / 4)."""
    score_all = 0
    means = {}
    type_list = ["Subject Correspondence", "Appearance Description", "Temporal Description", "Hallucination Detection"]
    for tp in type_list:
        total = 0
        score = 0
        for d in data:
            if tp not in d:
                continue
            total += 1
            score += d[tp]
        means[tp] = score / total
        score_all += score / total
    return means, score_all / 4


def judge_user_message(caption: str, pred: str) -> str:
    """videorefer/eval/videorefer_bench_d/1.eval_gpt_new.py: the user message."""
    gt = "##Correct answer: " + caption + "\n"
    pred = "##Predicted answer: " + pred + "\n"
    return gt + pred


JUDGE_SAMPLING = {"temperature": 0.7, "max_tokens": 800, "top_p": 0.95}  # 1.eval_gpt_new.py `interaction`


def som_frame_sample(duration: int, video_frames: int = 16) -> list[int]:
    """benchmark/qa_add_mask_first_frame.py (and description_add_mask_*.py) `frame_sample`."""
    num_frames = 32
    seg_size = float(duration - 1) / num_frames
    raw_frame_ids = []
    for i in range(num_frames):
        start = int(np.round(seg_size * i))
        end = int(np.round(seg_size * (i + 1)))
        raw_frame_ids.append((start + end) // 2)
    sampled_frame_ids = []
    seg_size = float(num_frames - 1) / video_frames
    for i in range(video_frames):
        start = int(np.round(seg_size * i))
        end = int(np.round(seg_size * (i + 1)))
        sampled_frame_ids.append(raw_frame_ids[(start + end) // 2])
    return sampled_frame_ids


def som_q_prompt(line: dict) -> str:
    """benchmark/infer_videorefer_bench_q_qwen2vl.py `VideoRefer_Bench_Q_general.__getitem__`: the prompt."""
    matches = re.findall(r"<object(\d+)>", line["Question"])
    colors = ["red", "green", "yellow", "blue", "grey", "purple", "orange", "brown", "pink"]
    color_str = ""
    for i, obj in enumerate(matches):
        if i != 0:
            color_str += f"; <object{obj}>: {colors[i]}"
        else:
            color_str += f"<object{obj}>: {colors[i]}"
    color_str += "."
    prompt = "I have highlighted an object using a colored mask in the first frame it occurs in the video. "
    prompt += color_str
    prompt += line["Question"].replace("<region>", "")
    prompt += " ".join(line["options"])
    prompt += ". Answer with the option's letter from the given choices directly."
    return prompt


# benchmark/evaluation_general_mllms.md: the Bench-D prompts for general MLLMs.
SOM_D_PROMPTS = {
    "single": "I have outlined an object with a red contour in the first frame in the video. Please describe the "
              "object in the entire video in detail.",
    "multi": "I have outlined an object with a red contour in the video. Please describe the object in detail.",
}
D_QUESTION = "Please give a detailed description of the highlighted object [<region>] in the video."  # inference_d


def q_question(line: dict) -> str:
    """videorefer/eval/inference_videorefer_q_bench.py `__getitem__`: the question our model is asked."""
    question = line["Question"].replace("<region>", "[<region>]")
    suffix = ". Answer with the option's letter from the given choices directly."
    return question + " " + " ".join(line["options"]) + suffix
