"""The data engine's agents (analyzer, annotator, segmentor, reviewer, refiner, QA, short captions) and the
model backends they call. Imports `engine` and `storage`, never `flows`.
"""
