"""The chat backend for a transformers model on this machine: a text LLM or an image-text VLM, batched.

`modality: text` loads `AutoModelForCausalLM` + `AutoTokenizer`; `modality: vision` loads
`AutoModelForImageTextToText` + `AutoProcessor` (images decoded from the request's JPEGs with PIL and placed
where the chat template puts its image token). Requests are rendered with the model's chat template, padded
on the left, and generated in batches of `batch_size` (greedy at temperature 0, sampling otherwise) inside a
worker thread (`asyncio.to_thread`), one batch at a time, so the event loop keeps serving other work. A local
model has no server-side structured output, so when a request carries a JSON schema the schema is appended to
the last user message as an instruction; the agent validates and repairs the reply as for any backend.
The model loads on first use; a directory that does not hold a loadable model is a `ConfigError`.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from agents.backends.base import ChatMessage, ChatReply, ChatRequest, ImagePart
from engine.config import LocalChatConfig
from engine.errors import BackendUnavailableError, ConfigError

_SCHEMA_INSTRUCTION = "Reply with one JSON object that follows this JSON schema:\n"


class LocalChatBackend:
    """`ChatBackend` over a local transformers model; see the module docstring."""

    kind = "local"

    def __init__(self, config: LocalChatConfig) -> None:
        if config.batch_size < 1 or config.max_new_tokens < 1:
            raise ConfigError("local backend: batch_size and max_new_tokens must be at least 1")
        self.config = config
        self.model = config.model
        self._load_lock = threading.Lock()
        self._locks: dict[int, asyncio.Lock] = {}
        self._model: Any = None
        self._processor: Any = None  # a tokenizer (text) or a processor (vision)
        self.batches_run = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __repr__(self) -> str:
        modality, device = self.config.modality, self.config.device
        return f"LocalChatBackend(model={self.model!r}, modality={modality!r}, device={device!r})"

    async def complete(self, request: ChatRequest) -> ChatReply:
        [result] = await self._run_batches([request])
        if isinstance(result, Exception):
            raise result
        return result

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        results = await self._run_batches(list(requests))
        for result in results:
            if isinstance(result, ConfigError | BackendUnavailableError):
                raise result
        return results

    async def aclose(self) -> None:
        self._model = None
        self._processor = None

    # ------------------------------------------------------------ batching

    async def _run_batches(self, requests: list[ChatRequest]) -> list[ChatReply | Exception]:
        results: list[ChatReply | Exception] = []
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            async with self._batch_lock():
                try:
                    results.extend(await asyncio.to_thread(self._generate_chunk, chunk))
                except (ConfigError, BackendUnavailableError):
                    raise
                except Exception as exc:  # a failure of this batch (e.g. out of memory) fails its items only
                    results.extend([exc] * len(chunk))
        return results

    def _batch_lock(self) -> asyncio.Lock:
        # One batch on the model at a time: concurrent batches would only fight over the same device.
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._locks:
            self._locks = {loop_id: asyncio.Lock()}
        return self._locks[loop_id]

    def _generate_chunk(self, chunk: list[ChatRequest]) -> list[ChatReply]:
        self._ensure_loaded()
        # A batch shares one decoding mode, so requests are grouped by temperature (usually all the same).
        groups: dict[float, list[int]] = {}
        for index, request in enumerate(chunk):
            temperature = self.config.temperature if request.temperature is None else request.temperature
            groups.setdefault(float(temperature), []).append(index)
        by_index: dict[int, ChatReply] = {}
        for temperature, indices in groups.items():
            group = [chunk[i] for i in indices]
            for i, reply in zip(indices, self._generate(group, temperature), strict=True):
                by_index[i] = reply
        replies = [by_index[i] for i in range(len(chunk))]
        self.batches_run += 1
        return replies

    def _generate(self, requests: list[ChatRequest], temperature: float) -> list[ChatReply]:
        import torch

        started = time.perf_counter()
        conversations = [_conversation(r, vision=self.config.modality == "vision") for r in requests]
        texts = [
            self._processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
        ]
        if self.config.modality == "vision":
            images = [_decode_jpeg(part.jpeg) for r in requests for m in r.messages for part in m.content
                      if isinstance(part, ImagePart)]
            inputs = self._processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        else:
            inputs = self._processor(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.config.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        max_new_tokens = max(self._max_new_tokens(r) for r in requests)
        sampling = temperature > 0
        generation: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sampling}
        if sampling:
            generation["temperature"] = temperature
        else:  # greedy: clear sampling knobs a checkpoint's generation_config may carry, to avoid warnings
            generation.update(temperature=None, top_p=None, top_k=None)
        tokenizer = self._tokenizer()
        generation["pad_token_id"] = tokenizer.pad_token_id
        with torch.inference_mode():
            output = self._model.generate(**inputs, **generation)
        prompt_length = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_length:]
        latency = (time.perf_counter() - started) / len(requests)
        replies = []
        for row, request in enumerate(requests):
            tokens = _until_eos(new_tokens[row].tolist(), tokenizer.eos_token_id, tokenizer.pad_token_id)
            tokens = tokens[: self._max_new_tokens(request)]
            prompt_tokens = int(inputs["attention_mask"][row].sum())
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += len(tokens)
            replies.append(
                ChatReply(
                    text=tokenizer.decode(tokens, skip_special_tokens=True),
                    model=self.model,
                    backend=self.kind,
                    latency_s=latency,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(tokens),
                )
            )
        return replies

    def _max_new_tokens(self, request: ChatRequest) -> int:
        if request.max_tokens is None:
            return self.config.max_new_tokens
        return max(1, min(request.max_tokens, self.config.max_new_tokens))

    # ------------------------------------------------------------ loading

    def _tokenizer(self) -> Any:
        return getattr(self._processor, "tokenizer", self._processor)

    def _ensure_loaded(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import (
                AutoModelForCausalLM,
                AutoModelForImageTextToText,
                AutoProcessor,
                AutoTokenizer,
            )

            dtype = getattr(torch, self.config.dtype)
            try:
                if self.config.modality == "vision":
                    processor = AutoProcessor.from_pretrained(self.config.model)
                    model = AutoModelForImageTextToText.from_pretrained(self.config.model, dtype=dtype)
                else:
                    processor = AutoTokenizer.from_pretrained(self.config.model)
                    model = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=dtype)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"local backend cannot load {self.config.modality} model {self.config.model!r}: {exc}"
                ) from exc
            tokenizer = getattr(processor, "tokenizer", processor)
            tokenizer.padding_side = "left"  # decoder-only batches are padded on the left so generation continues
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if getattr(processor, "chat_template", None) is None and getattr(tokenizer, "chat_template", None):
                processor.chat_template = tokenizer.chat_template
            if getattr(processor, "chat_template", None) is None:
                raise ConfigError(f"local model {self.config.model!r} has no chat template")
            self._model = model.to(self.config.device).eval()
            self._processor = processor


def _conversation(request: ChatRequest, *, vision: bool) -> list[dict[str, Any]]:
    messages = list(request.messages)
    if request.json_schema is not None:
        instruction = _SCHEMA_INSTRUCTION + json.dumps(dict(request.json_schema), sort_keys=True)
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last_user is None:
            messages.append(ChatMessage(role="user", content=(instruction,)))
        else:
            message = messages[last_user]
            messages[last_user] = ChatMessage(role="user", content=(*message.content, instruction))
    return [_message(m, vision=vision) for m in messages]


def _message(message: ChatMessage, *, vision: bool) -> dict[str, Any]:
    if not vision:
        if any(isinstance(part, ImagePart) for part in message.content):
            raise ConfigError("a text-only local model was sent images; configure `modality: vision` for this agent")
        return {"role": message.role, "content": "\n\n".join(message.content)}  # type: ignore[arg-type]
    content = [
        {"type": "image"} if isinstance(part, ImagePart) else {"type": "text", "text": part}
        for part in message.content
    ]
    return {"role": message.role, "content": content}


def _decode_jpeg(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _until_eos(tokens: list[int], eos_token_id: Any, pad_token_id: Any) -> list[int]:
    stops = set(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]) - {None}
    kept = []
    for token in tokens:
        if token in stops:
            break
        kept.append(token)
    # Rows that finished early are padded by generate(); pads after the text are not completion tokens.
    while kept and kept[-1] == pad_token_id:
        kept.pop()
    return kept
