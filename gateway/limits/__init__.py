"""Per-key limits: requests and images per minute, requests in flight, spend per day and month.

``policy`` turns a key's configured limits into a ``Plan`` for one request and a ``Decision`` into
OpenAI's headers and 429; a backend checks and counts a plan atomically: ``memory`` (one process)
or ``redis_backend`` (every replica sharing one Redis). The middleware is gateway/middleware/limits.py.
"""

from gateway.limits.backend import BackendUnavailable, LimitsBackend, make_backend
from gateway.limits.policy import Decision, Plan

__all__ = ["BackendUnavailable", "Decision", "LimitsBackend", "Plan", "make_backend"]
