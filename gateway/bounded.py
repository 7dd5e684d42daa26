"""Text a client or an upstream controls, cut to a bound where the gateway keeps or logs it.

A request record lives on after its request (the dashboard's recent requests, the access log), so
every string in it that someone outside chose is bounded when it is stored: the model a client
asked for (a megabyte of ``model`` kept 250 times was 270 MB and a 210 MB dashboard page), an
upstream's error message and code. Ids (user, session, request) are refused past their bounds at
the door instead (gateway/middleware/identity.py, gateway/middleware/metrics.py). What a client
sent is still answered in full where OpenAI quotes it back (an error message naming its model).
"""

from __future__ import annotations

#: A name (a model asked for, an error code): longer than any real one.
NAME_CHARS = 256
#: A message (an upstream's error text): a few lines.
MESSAGE_CHARS = 1_000


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
