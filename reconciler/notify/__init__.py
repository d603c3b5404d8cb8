"""Notifications: audit events people want to hear about, sent to their chat or webhook.

``messages`` (pure) decides which audit events become which notification and renders the
request each receiver type expects; ``sender`` (I/O) delivers them from a queue per
receiver in the background, with retries and backoff.
"""
