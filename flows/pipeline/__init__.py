"""The data engine's pipeline as plain functions (no Prefect): ingest a manifest, run one stage over one
pinned shard, export a shard, and the figures of a run. The Prefect flows in `flows.engine_flows` only
schedule these functions; tests and benchmarks can call them directly.
"""
