"""Every Prometheus metric the gateway exports, defined in one place.

Labels are bounded: routes are route templates, models are configured ids (or "unknown"),
never user ids, session ids, prompts or raw paths.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from gateway import __version__

#: Image calls take from tens of milliseconds (cached/local) to minutes.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)

REQUESTS = Counter(
    "opengateway_requests", "HTTP requests answered, by route, model and status code.",
    ["route", "model", "status_code"])
REQUEST_DURATION = Histogram(
    "opengateway_request_duration_seconds", "Time from request start to response, by route.",
    ["route"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge(
    "opengateway_requests_in_flight", "Requests being served right now.", multiprocess_mode="livesum")
BUILD_INFO = Info("opengateway_build", "The running gateway's version.")
BUILD_INFO.info({"version": __version__})
