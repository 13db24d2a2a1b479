"""VideoRefer-Bench evaluation: set-of-marks VLM runner, Bench-Q scoring, Bench-D LLM judge, reports.

Readers of the benchmark files and the resumable prediction store live in `agents.bench.files` (shared with
`agents.bench.model_runner`, which runs our own model). Modules here import no heavy library at import time.
"""
