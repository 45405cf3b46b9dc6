"""The inference engine: base model loading, batched LoRA slots, soft prompts, the scheduler thread.

Modules are imported where used (``server.engine.model_loader`` ...), so importing this package
loads neither torch nor transformers.
"""
