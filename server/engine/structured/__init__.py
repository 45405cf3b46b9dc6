"""Structured outputs: a request's answer held to a JSON schema, a regex, a list of choices or a grammar.

``spec`` says what a request asks for (checked and bounded in the HTTP thread, no xgrammar import),
``grammar_cache`` compiles it once per spec off the engine thread, ``constraint`` keeps each row's
place in its grammar and masks the row's logits at every step (xgrammar, as vLLM and SGLang do).
"""
