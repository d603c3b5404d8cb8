"""What people read: fleet status and audit rows (pure), rich tables, the admin HTTP client.

``view`` turns the ``GET /v1/fleet`` document into display rows (pure, shared by the CLI
tables and the dashboard); ``timefmt`` parses and prints times (pure); ``tables`` draws rich
tables; ``client`` talks to the reconciler's admin endpoints (I/O).
"""
