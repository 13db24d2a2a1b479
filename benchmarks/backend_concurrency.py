"""Requests/s of `OpenAIChatBackend` against the stub server at a fixed latency, as a ratio of the ideal rate.

With `in_flight` requests on the wire and `latency_s` per reply, no client can beat `in_flight / latency_s`
requests/s; the figure is the achieved rate over that ideal (target >= 0.9). A second run injects transient
faults (429 with Retry-After, 500, timeouts) into a fraction of the requests: every request must still
complete, and the figure reports the achieved ratio and the retries it took. The stub server runs in a child
process so that its work does not compete with the client for this interpreter's GIL. Because the machine is
shared, the same run also measures a baseline: a minimal asyncio HTTP/1.1 client (64 keep-alive sockets, no
parsing beyond Content-Length) against the same server; `ratio_to_baseline` is the backend's rate over that
client's rate, the share of what this machine could do at that moment. The backend runs with its default
transport for http:// (`pooled`, agents/backends/http_transport.py); the clean run is repeated with the OpenAI
client's own httpx transport for comparison (`httpx_transport_ratio_to_ideal`). Every run sends one untimed
wave of `in_flight` requests first (connections opened, code paths warm), then times `requests` (default 20
waves, so the ramp-up of the first wave and the tail of the last weigh little) with the same number of waves
for the baseline and the backend. `client_cpu_ms_per_request` is the client process's CPU time over the timed
part divided by the requests: the cost that caps the rate on a busy machine, less noisy than the rate itself.
Prints ONE JSON line.

    .venv/bin/python benchmarks/backend_concurrency.py [--requests 1280] [--in-flight 64] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.backends.base import ChatMessage, ChatRequest  # noqa: E402
from agents.backends.openai_chat import OpenAIChatBackend  # noqa: E402
from agents.backends.stub_server import StubOpenAIServer  # noqa: E402
from engine.config import OpenAIChatConfig  # noqa: E402

SCHEMA = {
    "type": "object", "properties": {"nouns": {"type": "array", "items": {"type": "string"}}}, "required": ["nouns"]
}


def _serve(settings: dict, port_queue: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    with StubOpenAIServer(**settings) as server:
        port_queue.put(server.port)
        stop.wait(120)


class _ServerProcess:
    """The stub server in a child process (`spawn`, so no threads or loops are inherited)."""

    def __init__(self, **settings: object) -> None:
        context = multiprocessing.get_context("spawn")
        self._ports = context.Queue()
        self._stop = context.Event()
        self._process = context.Process(target=_serve, args=(settings, self._ports, self._stop), daemon=True)

    def __enter__(self) -> str:
        self._process.start()
        return f"http://127.0.0.1:{self._ports.get(timeout=60)}/v1"

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


async def _run(
    base_url: str, requests: int, in_flight: int, timeout_s: float, transport: str = "auto"
) -> tuple[float, float, OpenAIChatBackend, int]:
    config = OpenAIChatConfig(
        base_url=base_url, model="stub", api_key_env="BENCH_UNSET_KEY", max_in_flight=in_flight,
        timeout_s=timeout_s, max_retries=8, backoff_base_s=0.05, backoff_max_s=0.5, transport=transport,
    )
    backend = OpenAIChatBackend(config)
    batch = [
        ChatRequest(messages=(ChatMessage(role="user", content=(f"caption number {i}",)),), json_schema=SCHEMA)
        for i in range(requests)
    ]
    await backend.complete_batch(batch[:in_flight])  # warm the connection pool; not timed
    started, cpu_started = time.perf_counter(), time.process_time()
    results = await backend.complete_batch(batch)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    failed = sum(isinstance(r, Exception) for r in results)
    await backend.aclose()
    return elapsed, cpu, backend, failed


async def _raw_client(base_url: str, requests: int, in_flight: int) -> tuple[float, float]:
    """Seconds (wall, CPU) a bare asyncio client needs for `requests` POSTs over `in_flight` keep-alive connections."""
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": "caption"}]}).encode()
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\n"
    message = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(in_flight):
        idle.put_nowait(await asyncio.open_connection(host, int(port)))

    async def one() -> None:
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

    await asyncio.gather(*(one() for _ in range(in_flight)))  # warm-up, like the backend's
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one() for _ in range(requests)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    while not idle.empty():
        idle.get_nowait()[1].close()
    return elapsed, cpu


def measure_baseline(requests: int, in_flight: int, latency_s: float) -> tuple[float, float]:
    """The raw client's (ratio to ideal, client CPU ms per request)."""
    with _ServerProcess(latency_s=latency_s) as base_url:
        elapsed, cpu = asyncio.run(_raw_client(base_url, requests, in_flight))
    return requests / elapsed / (in_flight / latency_s), cpu / requests * 1000


def measure(
    requests: int, in_flight: int, latency_s: float, fault_rate: float, timeout_s: float, transport: str = "auto"
) -> dict:
    settings = {
        "latency_s": latency_s, "fault_rate": fault_rate, "retry_after_s": 0.05, "hang_s": min(timeout_s * 3, 10.0),
        "fault_kinds": ("rate_limit", "server_error", "timeout"), "seed": 1,
    }
    with _ServerProcess(**settings) as base_url:
        elapsed, cpu, backend, failed = asyncio.run(_run(base_url, requests, in_flight, timeout_s, transport))
    ideal = in_flight / latency_s
    usage = backend.usage
    return {
        "requests": requests,
        "elapsed_s": round(elapsed, 3),
        "req_per_s": round(requests / elapsed, 1),
        "ratio_to_ideal": round(requests / elapsed / ideal, 3),
        "client_cpu_ms_per_request": round(cpu / requests * 1000, 3),
        "failed": failed,
        "retries": usage.retries,
        "max_in_flight_seen": usage.max_in_flight,
        "pooled_transport": backend.uses_pooled_transport,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1280)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=1.0, help="client timeout of the faulty run (faults hang 3x)")
    args = parser.parse_args()
    baseline, baseline_cpu_ms = measure_baseline(args.requests, args.in_flight, args.latency)
    # No fault hangs in the clean run: a generous client timeout keeps a CPU-starved client from timing out.
    clean = measure(args.requests, args.in_flight, args.latency, 0.0, 30.0)
    clean_httpx = measure(args.requests, args.in_flight, args.latency, 0.0, 30.0, transport="httpx")
    faulty = measure(args.requests, args.in_flight, args.latency, args.fault_rate, args.timeout)
    print(json.dumps({
        "benchmark": "backend_concurrency",
        "ideal_req_per_s": args.in_flight / args.latency,
        "in_flight": args.in_flight,
        "latency_s": args.latency,
        "ratio_to_ideal": clean["ratio_to_ideal"],
        "target_ratio": 0.9,
        "baseline_raw_client_ratio_to_ideal": round(baseline, 3),
        "ratio_to_baseline": round(clean["ratio_to_ideal"] / baseline, 3),
        "client_cpu_ms_per_request": clean["client_cpu_ms_per_request"],
        "baseline_client_cpu_ms_per_request": round(baseline_cpu_ms, 3),
        "httpx_transport_ratio_to_ideal": clean_httpx["ratio_to_ideal"],
        "clean": clean,
        "fault_rate": args.fault_rate,
        "faulty_ratio_to_ideal": faulty["ratio_to_ideal"],
        "faulty": faulty,
        "all_completed": clean["failed"] == 0 and faulty["failed"] == 0,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
