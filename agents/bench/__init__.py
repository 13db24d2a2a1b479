"""VideoRefer-Bench, in one place: readers, runners, scoring, judge, report, and the job that chains them.

`files` (readers of the published Bench-D/-Q JSON, the resumable prediction store), `protocol` (release / paper:
frames, question strings, set-of-marks prompts, the judge prompt's source and digest), `model_runner` (our model,
handed in as a pipeline), `vlm_runner` + `marks` (general VLMs behind an OpenAI-compatible URL, set-of-marks),
`q_scoring` and `judge` (the release's scoring, crashes fixed), `report`, and `job` (`run_bench`, what the CLI and
the `evaluate_checkpoint` flow both call; `score_predictions` re-scores a file). `synthetic` writes small files in
the published format for tests and demos. Modules here import no heavy library at import time and no model code.
"""
