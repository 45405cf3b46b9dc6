"""Whether an adapter fits a base: every module it touches exists there with the shape it implies.

One check for every component: the registry at push (from the adapter's own tensors), the merger
(each pair against the base checkpoint) and the server (the registry's recorded shapes against the
running base, and each pair against the layer it is loaded into), so they refuse the same adapters
with the same words.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

from ..errors import IncompatibleBase

__all__ = ["PROMPT_MODULE", "base_weight_name", "missing_module", "check_shape_fits", "check_shapes_fit"]

# The module name a prompt-tuning adapter's one tensor is recorded under; its "shape" is (width,).
PROMPT_MODULE = "prompt_embeddings"


def base_weight_name(weights: Collection[str], module_or_tensor: str) -> str | None:
    """The checkpoint name for a module path as PEFT sees it (``model.layers.0.q_proj``), or None.

    PEFT's wrapped layers insert ``.base_layer``, and checkpoints differ in whether they keep the
    model's top-level prefix (GPT-2's ``transformer.`` is sometimes absent), so the name is tried
    as given, then without its first component.
    """
    name = module_or_tensor.replace(".base_layer", "")
    candidates = [name, name + ".weight"]
    if "." in name:
        rest = name.split(".", 1)[1]
        candidates += [rest, rest + ".weight"]
    return next((c for c in candidates if c in weights), None)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def missing_module(module: str, *, base: str, where: str = "") -> IncompatibleBase:
    """The error for an adapter that touches a module the base lacks (for the caller to raise)."""
    return IncompatibleBase(f"{_prefix(where)}adapter touches {module}, which base {base} does not have")


def check_shape_fits(module: str, implied: Sequence[int], have: Sequence[int] | None, *, base: str,
                     where: str = "") -> None:
    """Raise ``IncompatibleBase`` unless the base has ``module`` (``have`` its shape) shaped as implied."""
    if have is None:
        raise missing_module(module, base=base, where=where)
    if tuple(have) != tuple(implied):
        raise IncompatibleBase(
            f"{_prefix(where)}adapter implies shape {list(implied)} for {module}, base {base} has {list(have)} "
            "(an adapter for another base?)"
        )


def check_shapes_fit(shapes: Mapping[str, Sequence[int]], weights: Mapping[str, Sequence[int]], *, base: str,
                     hidden_size: int | None, where: str = "") -> None:
    """Check every ``module -> implied weight shape`` of an adapter (the form the registry records)
    against a base's ``weight name -> shape``; a prompt's width is checked against ``hidden_size``."""
    for module, shape in shapes.items():
        if module == PROMPT_MODULE:
            if hidden_size is not None and shape[0] != hidden_size:
                raise IncompatibleBase(
                    f"{_prefix(where)}prompt embeddings have width {shape[0]}, base {base} has hidden size "
                    f"{hidden_size}"
                )
            continue
        name = base_weight_name(weights, module)
        check_shape_fits(module, shape, None if name is None else weights[name], base=base, where=where)
