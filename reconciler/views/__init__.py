"""What people read: the fleet-status document, display rows, rich tables, the admin client.

``fleet_status`` builds the ``GET /v1/fleet`` document from the store's records (pure) and
reads it from a store (``read_fleet_status``, the one read model behind the API, the CLI and
the dashboard); ``view`` turns that document into display rows (pure, shared by the CLI
tables and the dashboard); ``timefmt`` parses and prints times (pure); ``tables`` draws rich
tables; ``client`` talks to the reconciler's admin endpoints (I/O).
"""
