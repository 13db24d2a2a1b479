"""Pure-Python core of the VideoRefer suite: typed records, ids, errors, config, video frames and masks.

Nothing here imports torch, prefect, openai or transformers at import time, so every other package
(and every worker process) can depend on it cheaply.
"""
