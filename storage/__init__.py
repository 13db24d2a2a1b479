"""Where the data engine's data lives: the dataset root layout, Parquet stage tables, pinned shards, training
samples (JSON, validation, builders), WebDataset export and the VideoRefer-700K JSON format.

Import the submodules (`storage.root`, `storage.tables`, `storage.shards`, `storage.samples`, `storage.wds`,
`storage.videorefer_json`; VideoRefer-Bench files live in `agents.bench.files`); this package imports
nothing heavy so that `import storage` stays cheap.
"""
