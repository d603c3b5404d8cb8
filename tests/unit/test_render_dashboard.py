"""Dashboard HTML escapes every fleet value; sessions are HMAC values that expire."""

from __future__ import annotations

import pytest

from reconciler.dashboard import render, session

NOW = 1_800_000_000.0
EVIL = '<script>alert("x")</script>'


def test_fragment_escapes_names_messages_and_reasons() -> None:
    status = {
        "nodes": [
            {
                "node": EVIL,
                "health": "Healthy",
                "lastSeen": None,
                "workloads": [
                    {"name": EVIL, "desired": "1", "running": "0", "phase": EVIL, "message": EVIL}
                ],
            }
        ],
        "releases": [
            {"agent": EVIL, "version": EVIL, "phase": "Halted", "batch": "1/2", "reason": EVIL}
        ],
    }
    events = [{"time": NOW, "kind": EVIL, "message": EVIL, "node": EVIL}]
    html = render.fragment(status, events, NOW)
    assert "<script" not in html
    assert html.count("&lt;script&gt;") >= 8
    page = render.page(html, nonce='n"><script>')
    assert page.count("<script") == 1 and 'nonce="n&quot;&gt;&lt;script&gt;"' in page


def test_timeline_falls_back_to_batch_counter() -> None:
    status = {
        "nodes": [],
        "releases": [{"agent": "a", "version": "1.0.0", "phase": "Progressing", "batch": "2/3"}],
    }
    html = render.fragment(status, [], NOW)
    assert html.count('class="step ') == 3
    assert '<li class="step ok"><span class="n">batch 1</span>' in html
    assert '<li class="step busy"><span class="n">batch 2</span>' in html


@pytest.mark.parametrize(
    ("value", "token", "now", "want"),
    [
        (session.mint("tok", NOW), "tok", NOW + 10, True),
        (session.mint("tok", NOW), "other", NOW + 10, False),  # token rotated
        (session.mint("tok", NOW, 60), "tok", NOW + 61, False),  # expired
        ("tok", "tok", NOW, False),  # the raw token is not a session
        (None, "tok", NOW, False),
        ("9999999999." + "0" * 64, "tok", NOW, False),
    ],
)
def test_session_values(value: str | None, token: str, now: float, want: bool) -> None:
    assert session.valid(token, value, now) is want


def test_session_never_contains_token() -> None:
    token = "s3cret-admin-token"
    assert token not in session.mint(token, NOW)
    assert session.token_matches(token, token)
    assert not session.token_matches(token, token + "x")
    assert not session.token_matches(token, None)


def test_unlisted_nodes_show_as_unlisted_on_the_dashboard() -> None:
    row = {"node": "evil-1", "health": "Unlisted", "lastSeen": None, "workloads": []}
    html = render.fragment({"nodes": [row], "releases": []}, [], NOW)
    assert "evil-1" in html and "Unlisted" in html
    assert "0/0 nodes healthy" in html and "1 unlisted (no workload)" in html
