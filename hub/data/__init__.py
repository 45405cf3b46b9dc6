"""Instruction data tooling behind ``adapterhub data``: ``convert`` (Natural Instructions, ShareGPT,
prompt/completion, FLAN-style templates), ``self_instruct`` (new rows from seed tasks and any
OpenAI-compatible endpoint) and ``curate`` (LIMA-style deduplication, bounds, quotas, sampling).

The tools read and write the row shapes training reads (``adapterhub.train.formats``), so this
package imports ``train`` and never the other way; ROUGE-L, which both use, is ``adapterhub.rouge``."""
