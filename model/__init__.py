"""The VideoRefer model: configuration, SigLIP + STC connector + Qwen2 + object encoder, processing, inference.

Modules (import them directly; this package stays import-light, no torch at `import model`):
`model.configuration` (VideoReferConfig, presets "7b" / "tiny"), `model.modeling` (VideoReferForCausalLM,
set_trainable), `model.object_encoder` (mask pooling, temporal token merge), `model.connector` (STC connector),
`model.vision` (frozen SigLIP tower), `model.processing` (VideoReferProcessor: the tensor contract),
`model.checkpoint` (released-layout weights), `model.inference` (VideoReferPipeline, save_tiny_model);
`model.training` trains it in stages; VideoRefer-Bench runs it through `agents.bench` (a pipeline is handed in).
"""
