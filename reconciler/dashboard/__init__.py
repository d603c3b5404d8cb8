"""The operators' dashboard: server-rendered HTML at ``/`` behind the admin token.

``routes(get_status, get_audit, admin_token)`` returns Starlette routes for the API's app
factory to mount. ``get_status`` returns the ``GET /v1/fleet`` document, ``get_audit`` the
recent audit events (dicts or ``AuditEvent`` values, oldest first); both may be sync or async.
"""

from __future__ import annotations

from reconciler.dashboard.routes import routes

__all__ = ["routes"]
