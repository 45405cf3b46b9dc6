"""Adapters resident on the served base: ``picker`` is where a request picks its adapter; it keeps
LoRA adapters in slots (``lora_cache``) and soft prompts (``soft_prompt_cache``), both in one
pinned LRU (``pinned_lru``), their files read through ``registry_files``."""
