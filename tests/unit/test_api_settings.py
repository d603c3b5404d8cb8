"""The API's settings are the config's values of the same names."""

from __future__ import annotations

from reconciler.api.context import MAX_WAIT_SECONDS, ApiSettings
from reconciler.config import Config


def test_api_settings_from_config_copies_every_shared_field() -> None:
    config = Config(
        repo="/srv/fleet.git",
        bootstrap_token="boot",
        admin_token="admin",
        webhook_secret="hook",
        heartbeat_ttl=7,
        max_body_bytes=9,
    )
    s = ApiSettings.from_config(config)
    assert (s.bootstrap_token, s.admin_token, s.webhook_secret) == ("boot", "admin", "hook")
    assert (s.heartbeat_ttl, s.max_body_bytes) == (7, 9)
    assert s.max_wait == MAX_WAIT_SECONDS  # not in the config: the API's own default
