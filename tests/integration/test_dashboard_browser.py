"""The dashboard in a real headless Chromium against the real reconciler and three real
agents: log in, see the nodes, watch a rollout advance without reloading, pause and resume
it with the rollout buttons, log out.

Screenshots land in test-artifacts/ (gitignored): dashboard-login.png, dashboard-rollout.png
(mid-rollout), dashboard.png (done), dashboard-paused.png (paused by its button),
dashboard-phone.png (a 390 px wide phone).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.helpers.operator_fleet import NODES, operated_fleet

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium missing: run `make sysdeps`"
)


def release_state(page: Page) -> tuple[str, str, str]:
    card = page.locator('article[data-release="hello"]').last
    return (
        card.locator(".ver").inner_text(),
        card.get_attribute("data-phase") or "",
        " | ".join(" ".join(t.split()) for t in card.locator(".step").all_text_contents()),
    )


def node_versions(page: Page) -> dict[str, str]:
    return {
        node: page.locator(f'tr[data-node="{node}"] .wl').inner_text().strip() for node in NODES
    }


def test_dashboard_login_nodes_and_live_rollout(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with operated_fleet(tmp_path, soak=2) as fleet, sync_playwright() as pw:
        url, token = fleet.server.url, fleet.server.admin_token
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")
        home = tmp_path / "chromium-home"  # Chromium's profile must not land in $HOME
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            env={
                "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CACHE_HOME": str(home / ".cache"),
            },
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()

            # not logged in: the login form; a wrong token is refused
            page.goto(url + "/")
            assert page.url.endswith("/ui/login")
            page.screenshot(path=ARTIFACTS / "dashboard-login.png")
            page.fill("#token", "not-the-token")
            with page.expect_response(lambda r: r.url.endswith("/ui/login")) as refused:
                page.click("button[type=submit]")
            assert refused.value.status == 401
            assert "not the admin token" in page.locator(".error").inner_text()
            assert context.cookies() == []

            # the right token: the fleet, and a session cookie that is not the token
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_selector("#nodes tr[data-node]")
            assert page.url == url + "/"
            (cookie,) = context.cookies()
            assert cookie["name"] == "fk_session" and cookie["httpOnly"] is True
            assert cookie["sameSite"] == "Strict" and token not in cookie["value"]
            assert node_versions(page) == {n: "hello 1.0.0" for n in NODES}
            assert release_state(page)[:2] == ("1.0.0", "Succeeded")

            # a new release rolls out; the page follows by itself (no reload)
            fleet.release("1.1.0")
            seen: list[tuple[str, str, str]] = []
            shot = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = release_state(page)
                if not seen or seen[-1] != state:
                    seen.append(state)
                if state[0] == "1.1.0" and state[1] != "Succeeded" and not shot:
                    page.screenshot(path=ARTIFACTS / "dashboard-rollout.png", full_page=True)
                    shot = True
                if state[:2] == ("1.1.0", "Succeeded") and set(node_versions(page).values()) == {
                    "hello 1.1.0"
                }:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"the page never showed 1.1.0 Succeeded: {seen}")
            phases = [phase for version, phase, _ in seen if version == "1.1.0"]
            assert {"Progressing", "Soaking"} & set(phases[:-1]), seen
            assert phases[-1] == "Succeeded"
            steps = seen[-1][2]
            assert "batch 1 node-a Done" in steps and "batch 2 node-b, node-c Done" in steps, steps
            assert page.locator("#audit tbody tr").count() >= 5
            assert "batch-started" in page.locator("#audit").inner_text()
            page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

            # the rollout buttons: Pause asks why, posts with the session, status shows it
            card = page.locator('article[data-release="hello"]').last
            assert card.locator("button.control").all_inner_texts() == ["Pause"]
            page.once("dialog", lambda d: d.accept("   "))
            card.locator('button[data-action="pause"]').click()
            page.wait_for_selector("#notice.bad")
            assert "a reason is required" in page.locator("#notice").inner_text()
            page.once("dialog", lambda d: d.accept("freeze for the browser test"))
            card.locator('button[data-action="pause"]').click()
            # a selector, not wait_for_function: the page's CSP forbids evaluating strings
            page.wait_for_selector("#notice:has-text('recorded')")
            assert "pause hello 1.1.0 recorded" in page.locator("#notice").inner_text()
            page.wait_for_selector('article[data-release="hello"] button[data-action="resume"]')
            reason = page.locator('article[data-release="hello"] .reason').last.inner_text()
            assert reason == "Paused by dashboard: freeze for the browser test"
            paused = fleet.release_row()
            assert paused is not None and paused["paused"]["by"] == "dashboard"
            page.screenshot(path=ARTIFACTS / "dashboard-paused.png", full_page=True)
            # another site cannot post a control with this browser's session
            forged = page.request.post(
                url + "/ui/rollouts/hello/resume",
                data='{"reason": "forged"}',
                headers={"Content-Type": "application/json", "Origin": "http://evil.example"},
            )
            assert forged.status == 403
            page.once("dialog", lambda d: d.accept("freeze over"))
            page.locator('article[data-release="hello"] button[data-action="resume"]').click()
            page.wait_for_selector('article[data-release="hello"] button[data-action="pause"]')
            resumed = fleet.release_row()
            assert resumed is not None and resumed["paused"] is None
            with fleet.server.admin() as c:
                events = c.get("/v1/audit").json()["events"]
            controls = [
                (e["kind"], e["details"]["by"], e["details"]["reason"])
                for e in events
                if e["kind"] in ("rollout-pause", "rollout-resume")
            ]
            assert controls == [
                ("rollout-pause", "dashboard", "freeze for the browser test"),
                ("rollout-resume", "dashboard", "freeze over"),
            ]

            # readable on a phone: no sideways scrolling, each node a labelled card
            phone = context.new_page()
            phone.set_viewport_size({"width": 390, "height": 844})
            phone.goto(url + "/")
            phone.wait_for_selector("#nodes tr[data-node]")
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"page is {width}px wide on a 390px phone"
            phone.screenshot(path=ARTIFACTS / "dashboard-phone.png", full_page=True)

            # log out: back to the form, and the fragment endpoint refuses
            page.click("text=Log out")
            page.wait_for_url(url + "/ui/login")
            assert context.cookies() == []
            assert page.request.get(url + "/ui/fragment").status == 401
        finally:
            browser.close()
