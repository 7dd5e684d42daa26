"""The host rule for URLs an upstream hands back (a polling URL, a result to download): the URL
must be ``https`` on one of the provider's domains, checked before any request is made to it,
so a forged or compromised answer cannot make the gateway call into its own network."""

from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from gateway.provider_error import ProviderError


def host_allowed(host: str, domains: Iterable[str]) -> bool:
    """``host`` is one of ``domains`` or under one (``delivery-eu.bfl.ai`` is under ``bfl.ai``).
    Case and a trailing dot are ignored; a domain is matched whole, never as a suffix of a label
    (``evilbfl.ai`` is not under ``bfl.ai``)."""
    host = host.lower().rstrip(".")
    for domain in domains:
        domain = domain.lower().strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def allowed_url(url: str, domains: Iterable[str], *, upstream: str, what: str = "URL",
                schemes: Iterable[str] = ("https",), operator_domains: Iterable[str] = ()) -> str:
    """``url`` when its scheme is one of ``schemes`` and its host is under ``domains``, or when
    it is http(s) on one of ``operator_domains`` (domains the operator added in the plugin's
    settings: a proxy, a test double); else a ProviderError (502, ``upstream_url_refused``)
    naming the host, never the whole URL (a signed URL's query is a credential). No request is
    made in either case."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        host, parts = "", None
    if parts is None or not host or parts.username is not None or parts.password is not None:
        raise ProviderError(f"{upstream} handed back a {what} that is not a plain http(s) URL; it was not requested.",
                            status=502, code="upstream_url_refused")
    if parts.scheme in ("http", "https") and host_allowed(host, operator_domains):
        return url
    if parts.scheme not in tuple(schemes) or not host_allowed(host, domains):
        shown = host[:100]
        raise ProviderError(f"{upstream} handed back a {what} on {parts.scheme}://{shown}, outside the provider's "
                            "domains; it was not requested.", status=502, code="upstream_url_refused")
    return url
