"""The dashboard's HTTP contract on the real reconciler: login, session cookie attributes,
security headers, the fragment endpoint, bearer access, forged sessions, logout."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers.server import running_server


def test_dashboard_login_session_and_headers(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as server:
        check_dashboard(server.url, server.admin_token)


def check_dashboard(url: str, token: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert c.get("/ui/fragment").status_code == 401

        form = c.get("/ui/login")
        assert form.status_code == 200
        assert 'name="viewport"' in form.text and 'type="password"' in form.text
        csp = form.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert f'<style nonce="{nonce}">' in form.text
        assert form.headers["x-frame-options"] == "DENY"

        bad = c.post("/ui/login", data={"token": "wrong"})
        assert bad.status_code == 401 and "set-cookie" not in bad.headers

        ok = c.post("/ui/login", data={"token": token})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith("fk_session=")
        for attr in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
            assert attr.lower() in cookie.lower(), (attr, cookie)
        assert "secure" not in cookie.lower()  # plain http on 127.0.0.1
        session = c.cookies["fk_session"]
        assert token not in session

        page = c.get("/")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        for node in ("node-a", "node-b", "node-c"):
            assert f'data-node="{node}"' in page.text
        assert 'id="audit"' in page.text and 'id="releases"' in page.text
        fragment = c.get("/ui/fragment")
        assert fragment.status_code == 200 and "<html" not in fragment.text
        assert 'id="nodes"' in fragment.text

        out = c.post("/ui/logout")
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert "fk_session" not in c.cookies
        assert c.get("/ui/fragment").status_code == 401

    with httpx.Client(base_url=url, timeout=10) as c:
        # a forged or replayed-after-rotation session value is refused
        forged = session.split(".")[0] + "." + "0" * 64
        c.cookies.set("fk_session", forged)
        assert c.get("/").status_code == 303
        c.cookies.set("fk_session", token)  # the raw token is not a session either
        assert c.get("/").status_code == 303
        # scripts may use the admin token as a bearer token instead of logging in
        r = c.get("/ui/fragment", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and 'id="releases"' in r.text
        r = c.get("/ui/fragment", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
