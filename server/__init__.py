"""Serving adapters, in two parts that meet only through the engine's public calls.

- ``engine/``: the inference library. It loads the base model, holds LoRA slots and soft prompts,
  and schedules batched generation on its own thread. It imports no Flask, so a program can run
  it in-process.
- ``http/``: the Flask layer, and nothing but HTTP. The registry API, the Hugging Face download
  protocol and the web page serve a ``LocalRegistry``; the OpenAI API, ``/health`` and
  ``/metrics`` serve an engine. It also holds the waitress runner and the handlers that answer
  every error with its row of the one error table, ``adapterhub.error_codes`` (in the library, so
  clients read it without Flask).

``start_engine`` and ``EngineHandle`` (``serving``) run both in this process:
``from adapterhub.server import start_engine``. Importing this package loads neither torch nor
Flask; they come with the first engine.
"""

from .serving import EngineHandle, start_engine

__all__ = ["start_engine", "EngineHandle"]
