"""The test kit for provider plugin authors (needs pytest; the gateway itself never imports it).

- ``FakeUpstream`` (gateway/testing/upstream.py): a scripted aiohttp server on loopback that
  speaks whatever API your provider does, with ``json_reply``, ``bytes_reply``, ``hang``,
  ``close_connection`` and ``png_bytes`` to script it, recording every request it received.
- ``ProviderContract`` (gateway/testing/contract.py): the tests every plugin should pass,
  inherited by one class in your test suite.

The gateway's own built-in plugins are tested with the same kit (tests/test_google.py).
"""

from gateway.testing.contract import KINDS, ProviderContract
from gateway.testing.upstream import (Behaviour, FakeUpstream, Received, bytes_reply, close_connection, hang,
                                      json_reply, png_bytes)

__all__ = ["KINDS", "Behaviour", "FakeUpstream", "ProviderContract", "Received", "bytes_reply", "close_connection",
           "hang", "json_reply", "png_bytes"]
