"""The reconciler's HTTP API (Starlette): agents, people, forges, Prometheus.

``create_app(ctx)`` builds the ASGI app over an ``ApiContext`` (store, caches, metrics,
and the callbacks into the reconcile loop and the git source).
"""

from __future__ import annotations

from reconciler.api.app import create_app
from reconciler.api.context import ApiContext, ApiSettings

__all__ = ["ApiContext", "ApiSettings", "create_app"]
