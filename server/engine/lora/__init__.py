"""LoRA for a batch whose rows use different adapters: ``slot_bank`` (the entry point), ``layer``
(the wrapped linear), ``kernels`` (how the update is computed), ``row_plan`` (which slot each row
uses), ``loader`` (adapter file -> slot), ``native_delta`` (the float32 CPU update, row by row).

Imports run one way: ``slot_bank`` -> ``loader`` -> ``layer`` -> ``kernels`` -> ``row_plan`` /
``native_delta`` (tests/test_import_graph.py checks it)."""
