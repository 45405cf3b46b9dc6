"""Training adapters on instruction data: ``data`` (rows, template, masking), ``config``, ``trainer``
(transformers' Trainer + PEFT), ``qlora`` (nf4 base), ``evaluate``, ``checkpoint`` (resume), ``register``.

Modules import torch and transformers lazily or on import of the module itself; importing this
package costs nothing, so the CLI stays fast.
"""
