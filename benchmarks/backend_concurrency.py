"""Rate and CPU per request of `OpenAIChatBackend` (lean and SDK paths) against a raw asyncio client, same run.

The stub OpenAI-compatible server (agents/backends/stub_server.py) answers after a fixed latency in a child
process (so its work does not compete with the client for this interpreter's GIL); with `in_flight` requests on
the wire no client beats `in_flight / latency_s` requests/s. Three clients send the same number of requests to
the same server, one after another, in each of `rounds` rounds: a raw asyncio client (the baseline: `in_flight`
keep-alive sockets, one prebuilt request of the same bytes, nothing parsed beyond Content-Length, no deadline),
the backend's lean path
(`client: lean`, the default for http://) and its SDK path (`client: sdk`, AsyncOpenAI over the pooled
transport). Each round is run twice: on a clean server, and on one that injects transient faults (429 with
Retry-After, 500, requests that hang past the client timeout) into `fault_rate` of the requests; there the raw
client retries with the backend's own policy (same timeout, Retry-After honoured, the same full-jitter backoff,
its socket back in the pool while it waits), so both pay the same waits. Every client sends one untimed wave of
`in_flight` requests first (connections opened, code paths warm), then `requests` timed ones.
`cpu_ms_per_request` is this process's CPU time over the timed part divided by the requests. Ratios
(`rate_to_raw`: achieved rate over the raw client's; `cpu_to_raw`: CPU per request over the raw client's) are
taken within a round, so a shared machine's load drifts out; the figures are medians over rounds, with the
spread. Targets (issue 16): the lean path's `rate_to_raw` >= 0.8 and `cpu_to_raw` <= 3, clean and faulty.
Prints ONE JSON line.

    .venv/bin/python benchmarks/backend_concurrency.py [--requests 1280] [--in-flight 64] [--latency 0.1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.backends.base import ChatMessage, ChatRequest  # noqa: E402
from agents.backends.openai_chat import OpenAIChatBackend, chat_completion_body  # noqa: E402
from agents.backends.stub_server import StubOpenAIServer  # noqa: E402
from engine.config import OpenAIChatConfig  # noqa: E402

SCHEMA = {
    "type": "object", "properties": {"nouns": {"type": "array", "items": {"type": "string"}}}, "required": ["nouns"]
}
TARGET_RATE_TO_RAW = 0.8
TARGET_CPU_TO_RAW = 3.0
# A spawned child imports this module (pydantic, the backend) before it serves: minutes on a loaded machine.
SERVER_START_TIMEOUT_S = 600.0
BACKOFF_BASE_S, BACKOFF_MAX_S, MAX_RETRIES = 0.05, 0.5, 8


def _serve(settings: dict, port_queue: multiprocessing.Queue, stop: multiprocessing.Event, parent: int) -> None:
    with StubOpenAIServer(**settings) as server:
        port_queue.put(server.port)
        # Until told to stop, or until the benchmark is gone (killed before it could say so).
        while not stop.wait(1.0) and os.getppid() == parent:
            pass


class _ServerProcess:
    """The stub server in a child process (`spawn`, so no threads or loops are inherited)."""

    def __init__(self, **settings: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._ports = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(
            target=_serve, args=(settings, self._ports, self._stop, os.getpid()), daemon=True
        )

    def __enter__(self) -> str:
        self._process.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            try:
                return f"http://127.0.0.1:{self._ports.get(timeout=1.0)}/v1"
            except Exception:  # queue.Empty: still starting
                if not self._process.is_alive():
                    raise RuntimeError(f"stub server exited during start-up ({self._process.exitcode})") from None
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"stub server not up within {SERVER_START_TIMEOUT_S:g}s") from None

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)


def _requests(count: int) -> list[ChatRequest]:
    return [
        ChatRequest(messages=(ChatMessage(role="user", content=(f"caption number {i}",)),), json_schema=SCHEMA)
        for i in range(count)
    ]


def _config(base_url: str, in_flight: int, timeout_s: float, client: str) -> OpenAIChatConfig:
    return OpenAIChatConfig(
        base_url=base_url, model="stub", api_key_env="BENCH_UNSET_KEY", max_in_flight=in_flight,
        timeout_s=timeout_s, max_retries=MAX_RETRIES, backoff_base_s=BACKOFF_BASE_S, backoff_max_s=BACKOFF_MAX_S,
        client=client, transport="pooled",
    )


async def _backend(base_url: str, requests: int, in_flight: int, timeout_s: float, client: str) -> dict:
    backend = OpenAIChatBackend(_config(base_url, in_flight, timeout_s, client))
    batch = _requests(requests)
    await backend.complete_batch(batch[:in_flight])  # warm the connection pool; not timed
    before = backend.usage
    started, cpu_started = time.perf_counter(), time.process_time()
    results = await backend.complete_batch(batch)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await backend.aclose()
    usage = backend.usage
    assert backend.uses_lean_client == (client == "lean")
    return {
        "elapsed": elapsed, "cpu": cpu, "failed": sum(isinstance(r, Exception) for r in results),
        "retries": usage.retries - before.retries, "max_in_flight_seen": usage.max_in_flight,
    }


async def _raw_client(base_url: str, requests: int, in_flight: int, timeout_s: float, faults: bool) -> dict:
    """The baseline: bare asyncio streams, one prebuilt request; with `faults`, the backend's retry policy."""
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    body = chat_completion_body(_requests(1)[0], _config(base_url, in_flight, timeout_s, "lean"))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
    message = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(in_flight):
        idle.put_nowait(await asyncio.open_connection(host, int(port)))
    jitter = random.Random(0)
    counts = {"retries": 0, "failed": 0}

    async def plain() -> None:  # the clean server: no deadline, no retries, nothing read but the length
        reader, writer = await idle.get()
        writer.write(message)
        await writer.drain()
        response_head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1]) for line in response_head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        idle.put_nowait((reader, writer))

    async def exchange() -> tuple[int, float | None]:
        reader, writer = await idle.get()
        try:
            async with asyncio.timeout(timeout_s):
                writer.write(message)
                await writer.drain()
                response_head = await reader.readuntil(b"\r\n\r\n")
                lines = response_head.split(b"\r\n")
                fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
                await reader.readexactly(int(fields[b"content-length"]))
        except BaseException:
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, int(port)))
            raise
        idle.put_nowait((reader, writer))
        retry_after = fields.get(b"retry-after")
        return int(lines[0][9:12]), None if retry_after is None else float(retry_after)

    async def one() -> None:
        for attempt in range(MAX_RETRIES + 1):
            try:
                status, retry_after = await exchange()
            except TimeoutError:
                status, retry_after = 0, None
            if status == 200:
                return
            if attempt < MAX_RETRIES:
                counts["retries"] += 1
                ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
                await asyncio.sleep(retry_after if retry_after is not None else jitter.uniform(0.0, ceiling))
        counts["failed"] += 1

    send = one if faults else plain
    await asyncio.gather(*(send() for _ in range(in_flight)))  # warm-up, like the backend's
    counts["retries"] = counts["failed"] = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(send() for _ in range(requests)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    while not idle.empty():
        idle.get_nowait()[1].close()
    return {"elapsed": elapsed, "cpu": cpu, **counts, "max_in_flight_seen": in_flight}


def _round(base_url: str, requests: int, in_flight: int, timeout_s: float, faults: bool) -> dict[str, dict]:
    runs = {
        "raw": asyncio.run(_raw_client(base_url, requests, in_flight, timeout_s, faults)),
        "lean": asyncio.run(_backend(base_url, requests, in_flight, timeout_s, "lean")),
        "sdk": asyncio.run(_backend(base_url, requests, in_flight, timeout_s, "sdk")),
    }
    for run in runs.values():
        run["req_per_s"] = requests / run["elapsed"]
        run["cpu_ms_per_request"] = run["cpu"] / requests * 1000
    return runs


def _summary(rounds: list[dict[str, dict]], ideal: float) -> dict:
    def spread(values: list[float], digits: int = 3) -> dict:
        return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}

    out: dict = {}
    for name in ("raw", "lean", "sdk"):
        runs = [r[name] for r in rounds]
        out[name] = {
            "req_per_s": spread([r["req_per_s"] for r in runs], 1),
            "ratio_to_ideal": spread([r["req_per_s"] / ideal for r in runs]),
            "cpu_ms_per_request": spread([r["cpu_ms_per_request"] for r in runs]),
            "retries": [r["retries"] for r in runs],
            "failed": sum(r["failed"] for r in runs),
            "max_in_flight_seen": max(r["max_in_flight_seen"] for r in runs),
        }
        if name != "raw":
            out[name]["rate_to_raw"] = spread([r[name]["req_per_s"] / r["raw"]["req_per_s"] for r in rounds])
            out[name]["cpu_to_raw"] = spread(
                [r[name]["cpu_ms_per_request"] / r["raw"]["cpu_ms_per_request"] for r in rounds], 2
            )
    lean = out["lean"]
    out["targets_met"] = (
        lean["rate_to_raw"]["median"] >= TARGET_RATE_TO_RAW and lean["cpu_to_raw"]["median"] <= TARGET_CPU_TO_RAW
        and lean["failed"] == 0
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1280)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=1.0, help="client timeout of the faulty run (faults hang 3x)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ideal = args.in_flight / args.latency
    faulty_settings = {
        "latency_s": args.latency, "fault_rate": args.fault_rate, "retry_after_s": 0.05,
        "hang_s": min(args.timeout * 3, 10.0), "fault_kinds": ("rate_limit", "server_error", "timeout"), "seed": 1,
    }
    clean_rounds, faulty_rounds = [], []
    with _ServerProcess(latency_s=args.latency) as clean_url, _ServerProcess(**faulty_settings) as faulty_url:
        for _ in range(args.rounds):
            # No fault hangs on the clean server: a generous timeout keeps a CPU-starved client from timing out.
            clean_rounds.append(_round(clean_url, args.requests, args.in_flight, 30.0, faults=False))
            faulty_rounds.append(_round(faulty_url, args.requests, args.in_flight, args.timeout, faults=True))
    clean, faulty = _summary(clean_rounds, ideal), _summary(faulty_rounds, ideal)
    print(json.dumps({
        "benchmark": "backend_concurrency",
        "ideal_req_per_s": ideal,
        "in_flight": args.in_flight,
        "latency_s": args.latency,
        "requests": args.requests,
        "rounds": args.rounds,
        "fault_rate": args.fault_rate,
        "targets": {"rate_to_raw_min": TARGET_RATE_TO_RAW, "cpu_to_raw_max": TARGET_CPU_TO_RAW},
        "lean_rate_to_raw": clean["lean"]["rate_to_raw"]["median"],
        "lean_cpu_to_raw": clean["lean"]["cpu_to_raw"]["median"],
        "faulty_lean_rate_to_raw": faulty["lean"]["rate_to_raw"]["median"],
        "faulty_lean_cpu_to_raw": faulty["lean"]["cpu_to_raw"]["median"],
        "sdk_cpu_to_raw": clean["sdk"]["cpu_to_raw"]["median"],
        "ratio_to_ideal": clean["lean"]["ratio_to_ideal"]["median"],
        "targets_met": clean["targets_met"] and faulty["targets_met"],
        "clean": clean,
        "faulty": faulty,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
