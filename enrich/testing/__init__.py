"""Fake servers for tests, benchmarks and offline trials: real HTTP on 127.0.0.1.

- :class:`FakeLLM` speaks the OpenAI chat completions API. It answers from a queue of scripted
  :class:`Reply` objects (then from a ``responder``, by default a valid enrichment built from the
  request's schema) and keeps every request it received in ``requests``.
- :class:`FakeChatDash` speaks the part of the ChatDash API enrich uses. It records every request,
  checks each PUT body against the contract's schema, and can be told to fail.

Both run in a background thread; use them as context managers::

    with FakeLLM() as llm, FakeChatDash(api_key="CD.test") as chatdash:
        llm.add(Reply.json({...}))
        ...

The modules: ``llm`` (FakeLLM, Reply, valid_answer), ``chatdash`` (FakeChatDash, Fault),
``openapi`` (validate_openapi), ``webhooks`` (deliveries signed as Retell, Vapi and ElevenLabs
sign them, for ``enrich serve``) and ``_server`` (the HTTP plumbing both fakes share). Nothing
else in enrich imports this package: it is for users' tests and enrich's own.
"""

from .chatdash import FakeChatDash, Fault
from .llm import FakeLLM, Reply, valid_answer
from .openapi import validate_openapi

__all__ = ["FakeLLM", "Reply", "FakeChatDash", "Fault", "validate_openapi", "valid_answer"]
