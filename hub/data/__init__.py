"""Instruction data tooling behind ``adapterhub data``: ``convert`` (Natural Instructions, ShareGPT,
prompt/completion, FLAN-style templates), ``self_instruct`` (new rows from seed tasks and any
OpenAI-compatible endpoint), ``curate`` (LIMA-style deduplication, bounds, quotas, sampling) and
``rouge`` (ROUGE-L, shared with evaluation)."""
