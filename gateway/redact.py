"""Scrubbing credentials from text bound for a client or a log: one ``Redactor`` per configuration.

Built by the runtime (gateway/runtime.py) from the configured provider credentials and the gateway
keys' digests, so a credential added by a reload is scrubbed from then on. Three nets:

1. Shapes: ``sk-...`` keys, ``Bearer ...``, the value of an ``Authorization``/``api-key``/``x-key``
   header line whatever its scheme, credentials in a URL.
2. Provider credentials, in whole and in part: upstreams quote keys masked (OpenAI's
   ``sk-abc*****wxyz``) or by their first or last characters, so any word of the text that holds
   a piece of four or more characters of a configured credential is scrubbed whole.
3. Gateway keys: only their SHA-256 digests are known, so every key-like word is hashed and
   scrubbed when it is one of them (a key sent under another scheme, or on a folded header line,
   reaches aiohttp's error log as a bare word).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any, Callable, Iterable, Mapping

REDACTED = "[redacted]"

_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_*\-]{4,}"
    r"|Bearer\s+[A-Za-z0-9._~+/*\-]+=*"
    r"|(?<=authorization:)[^\r\n'\"]+|(?<=authorization :)[^\r\n'\"]+"
    r"|(?<=api-key:)[^\r\n'\"]+|(?<=x-api-key:)[^\r\n'\"]+|(?<=x-key:)[^\r\n'\"]+|(?<=x-goog-api-key:)[^\r\n'\"]+"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@))", re.IGNORECASE)
#: A "word" that may carry a credential or a piece of one: key alphabets plus mask characters.
_WORD = re.compile(r"[A-Za-z0-9_\-.~+/=*•…]{4,}")
#: What masks a credential inside a word: "sk-abc*****wxyz", "sk-abc...wxyz", "sk-abc…wxyz".
_MASK = re.compile(r"[*•…]+|\.{2,}")
#: Setting names whose string values are credentials.
_SECRET_SETTING = re.compile(r"key|secret|token|password|credential|private", re.IGNORECASE)
#: Pieces shorter than this are not matched against credentials (too many false hits).
MIN_PIECE_CHARS = 4
#: Words at least this long are hashed and checked against the gateway keys.
MIN_KEY_CHARS = 16


def secrets_of(settings: Mapping[str, Any]) -> list[str]:
    """The credential-like values in a provider instance's settings (by setting name, nested too)."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, str):
            if secret and value.lstrip().startswith("{"):  # a JSON credential (a service-account key)
                try:
                    walk(json.loads(value), False)
                    return
                except ValueError:
                    pass
            if secret and len(value) >= 8:
                found.append(value)
        elif isinstance(value, Mapping):
            for name, item in value.items():
                walk(item, secret or bool(_SECRET_SETTING.search(str(name))))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item, secret)
    walk(settings, False)
    return found


class Redactor:
    def __init__(self, secrets: Iterable[str] = (), key_digests: frozenset[bytes] = frozenset()) -> None:
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        self.key_digests = key_digests

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _SHAPES.sub(REDACTED, text)
        if self.secrets or self.key_digests:
            text = _WORD.sub(self._word, text)
        return text

    def _word(self, match: re.Match[str]) -> str:
        word = match.group()
        if self.key_digests and len(word) >= MIN_KEY_CHARS:
            stripped = word.strip(".=/+~-_")
            for candidate in {word, stripped}:
                if hashlib.sha256(candidate.encode()).digest() in self.key_digests:
                    return REDACTED
        for piece in _MASK.split(word):
            piece = piece.strip(".")
            if len(piece) >= MIN_PIECE_CHARS and any(piece in secret for secret in self.secrets):
                return REDACTED
        return word


class RedactingFilter(logging.Filter):
    """For loggers that print what a client or an upstream sent: aiohttp's HTTP parser logs a
    malformed request with the offending header line, Authorization included (``Invalid header
    value char: b'Authorization: Bearer ...'``). ``redactor`` returns the current configuration's
    Redactor, so a reload's new credentials are scrubbed from then on."""

    def __init__(self, redactor: Callable[[], Redactor]) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self.redactor()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = redact(record.getMessage()), ()
        return True
