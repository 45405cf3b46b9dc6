"""LoRA for a batch whose rows use different adapters: ``slot_bank`` (the entry point), ``layer``
(the wrapped linear), ``kernels`` (how the update is computed), ``row_plan`` (which slot each row
uses), ``loader`` (adapter file -> slot)."""
