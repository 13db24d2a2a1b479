"""VideoRefer-Bench evaluation: set-of-marks VLM runner, Bench-Q scoring, Bench-D LLM judge, reports.

Readers of the benchmark files and the resumable prediction store live in `storage.bench_files` (shared with
`model.bench_runner`, which runs our own model). Modules here import no heavy library at import time.
"""
