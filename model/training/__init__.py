"""Staged training of the VideoRefer model: recipes, the WebDataset loader, the torchrun loop, checkpoints, launch.

Importing this package is light (no torch): each module imports torch inside the functions that need it,
except `loop` and `checkpointing`, which only run inside a training process.
"""
