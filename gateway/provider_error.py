"""``ProviderError``: an upstream call that did not produce images (part of the plugin contract,
re-exported by gateway/provider.py; its own module so the upstream HTTP interface can raise it)."""

from __future__ import annotations


class ProviderError(Exception):
    """An upstream call that did not produce images.

    ``status`` is the upstream HTTP status, or None when no HTTP answer arrived (connection
    refused or reset). ``message``, ``type``, ``code`` and ``param`` are the error in OpenAI's
    shape, already translated from the upstream's dialect. ``retryable`` None lets the router
    decide from ``status``; ``retry_after_s`` carries the upstream's ``retry-after`` /
    ``retry-after-ms``. ``timeout`` marks an upstream that did not answer in time. ``ambiguous``
    marks a failure after the whole request reached the upstream with no answer back (a timeout, a
    reset): the upstream may be generating, and billing, the images anyway.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "server_error",
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        timeout: bool = False,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.timeout = timeout
        self.ambiguous = ambiguous

    def __repr__(self) -> str:
        return f"ProviderError(status={self.status}, code={self.code!r}, message={self.message!r})"
