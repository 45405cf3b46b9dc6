"""Training adapters with TRL's ``SFTTrainer``: ``formats`` (Alpaca, messages, ShareGPT, prompt/completion
rows in TRL's shape), ``data`` (files, kinds, digests), ``templates`` (chat or Alpaca template), ``sft``
(SFTConfig and SFTTrainer from our settings), ``config`` and ``config_file`` (settings, YAML), ``trainer``
(the run), ``qlora`` (nf4 base), ``evaluate``, ``checkpoint`` (resume), ``register``.

Modules import torch, transformers and trl lazily or on import of the module itself; importing this
package costs nothing, so the CLI stays fast.
"""
