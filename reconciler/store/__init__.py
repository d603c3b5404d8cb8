"""Durable state of the reconciler: SQLite by default (WAL), PostgreSQL for several replicas.

``base.Store`` is the narrow interface every backend implements; ``open_store(url)``
picks the backend from the database URL.
"""
