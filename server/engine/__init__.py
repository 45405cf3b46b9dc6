"""The inference engine: one base model, many adapters, one continuously batched decode loop.

``engine``        the facade: ``create_engine``, ``Engine.submit`` / ``start`` / ``stop``
``request``       what an HTTP thread hands the engine and reads back (``GenerationRequest``, events)
``adapters/``     where a request picks its adapter (``picker``) and the caches keeping them resident
``scheduler``     the engine thread: admission, prefill, decode steps, rows leaving
``kv_cache``      the running batch's key/value cache, edited as rows join and leave
``sampler``       greedy / temperature / top_p / seed per row
``detokenizer``   tokens -> text released to the client, with stop strings
``lora/``         LoRA for mixed batches: slot bank, gathered layer, kernels, row plan, file loader
``model_loader``  the base model, optionally quantized
``int8_linear``   CPU int8 linear layers (fbgemm) whose rows never depend on their batch mates

Modules are imported where used, so importing this package loads neither torch nor transformers.
"""
