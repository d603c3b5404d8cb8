"""HTML for the dashboard (pure): the page shell, the live fragment, the login form.

Every value that comes from the fleet (names, versions, messages, reasons) goes through
``esc`` before it is placed in markup; templates only receive already-escaped HTML.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from reconciler.views.timefmt import iso
from reconciler.views.view import (
    AuditRow,
    NodeRow,
    ReleaseRow,
    audit_rows,
    health_tone,
    node_rows,
    release_rows,
    summary,
)

AUDIT_ROWS_SHOWN = 50


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@cache
def asset(name: str) -> str:
    """A file shipped in the package (templates/*.html, static/*.css, static/*.js)."""
    return resources.files(__package__).joinpath(name).read_text("utf-8")


def _pill(text: str, tone: str) -> str:
    return f'<span class="pill {esc(tone)}">{esc(text)}</span>'


def _td(label: str, inner: str, cls: str = "") -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    return f'<td data-label="{esc(label)}"{c}>{inner}</td>'


def _node_row(r: NodeRow) -> str:
    versions, phases = [], []
    for w in r.workloads:
        if w.converged:
            v = f"<b>{esc(w.name)}</b> {esc(w.running)}"
        else:
            arrow = '<span class="arrow">→</span>'
            v = f"<b>{esc(w.name)}</b> {esc(w.running)} {arrow} {esc(w.desired)}"
        title = f' title="{esc(w.message)}"' if w.message else ""
        versions.append(f'<div class="wl {esc(w.tone)}"{title}>{v}</div>')
        phases.append(f"<div>{_pill(w.phase, w.tone)}</div>")
    none = '<span class="muted">-</span>'
    cells = [
        _td("node", f"<strong>{esc(r.node)}</strong>"),
        _td("platform", f"{esc(r.platform)}<br><small>{esc(r.accelerator)}</small>"),
        _td("roles", esc(r.roles)),
        _td("health", _pill(r.health, health_tone(r.health))),
        _td("last seen", esc(r.last_seen), "stale" if r.tone == "stale" else ""),
        _td("workloads", "".join(versions) or none),
        _td("phase", "".join(phases) or none),
    ]
    return f'<tr class="row-{esc(r.tone)}" data-node="{esc(r.node)}">{"".join(cells)}</tr>'


def nodes_section(rows: Sequence[NodeRow]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Node", "Platform", "Roles", "Health", "Last seen", "Running → desired", "Phase")
    )
    body = "".join(_node_row(r) for r in rows) or (
        '<tr><td colspan="7" class="muted">No node has registered yet.</td></tr>'
    )
    return (
        f'<section id="nodes"><h2>Nodes <small>{len(rows)}</small></h2>'
        f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        "</section>"
    )


def _timeline(r: ReleaseRow) -> str:
    steps = []
    if r.batches:
        for b in r.batches:
            nodes = ", ".join(b.nodes) or "-"
            when = b.finished if b.finished != "-" else b.started
            steps.append(
                f'<li class="step {esc(b.tone)}"><span class="n">batch {b.index}</span> '
                f'<span class="nodes">{esc(nodes)}</span> '
                f'<span class="st">{esc(b.state)}</span> '
                f'<span class="when">{esc(when if when != "-" else "")}</span></li>'
            )
    else:
        # No per-batch detail from the server: draw n/m as m segments.
        n, _, m = r.batch.partition("/")
        if n.isdigit() and m.isdigit() and int(m) > 0:
            for i in range(1, int(m) + 1):
                tone = "ok" if i < int(n) else (r.tone if i == int(n) else "muted")
                steps.append(f'<li class="step {esc(tone)}"><span class="n">batch {i}</span></li>')
    if not steps:
        return ""
    return f'<ol class="timeline" aria-label="rollout batches">{"".join(steps)}</ol>'


def _release_card(r: ReleaseRow) -> str:
    facts = [("approval", r.approval), ("batch", r.batch)]
    if r.soak_left != "-":
        facts.append(("soak left", r.soak_left))
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    reason = f'<p class="reason {esc(r.tone)}">{esc(r.reason)}</p>' if r.reason else ""
    return (
        f'<article class="release row-{esc(r.tone)}" data-release="{esc(r.agent)}"'
        f' data-phase="{esc(r.phase)}">'
        f'<header><h3>{esc(r.agent)} <span class="ver">{esc(r.version)}</span></h3>'
        f"{_pill(r.phase, r.tone)}</header>"
        f'<dl class="facts">{dl}</dl>{reason}{_timeline(r)}{_controls(r)}</article>'
    )


def _controls(r: ReleaseRow) -> str:
    """Pause/resume, retry, promote buttons; dashboard.js asks for the reason and posts."""
    if not r.actions:
        return ""
    buttons = "".join(
        f'<button type="button" class="control" data-action="{esc(a)}"'
        f' data-release="{esc(r.agent)}">{esc(a.capitalize())}</button>'
        for a in r.actions
    )
    return f'<div class="controls" aria-label="rollout controls">{buttons}</div>'


def releases_section(rows: Sequence[ReleaseRow]) -> str:
    body = "".join(_release_card(r) for r in rows) or '<p class="muted">No releases.</p>'
    return (
        f'<section id="releases"><h2>Releases <small>{len(rows)}</small></h2>'
        f'<div class="cards">{body}</div></section>'
    )


def _audit_row(r: AuditRow) -> str:
    def opt(label: str, value: str, inner: str) -> str:
        return _td(label, inner, "nowrap empty" if value == "-" else "nowrap")

    cells = [
        _td("time", f"<time>{esc(r.time)}</time>", "nowrap"),
        _td("event", _pill(r.kind, r.tone)),
        opt("release", r.release, esc(r.release)),
        opt("node", r.node, esc(r.node)),
        opt("revision", r.revision, f"<code>{esc(r.revision)}</code>"),
        _td("what happened", esc(r.message), "msg"),
    ]
    return f"<tr>{''.join(cells)}</tr>"


def audit_section(rows: Sequence[AuditRow]) -> str:
    shown = list(reversed(rows))[:AUDIT_ROWS_SHOWN]  # newest first
    head = "".join(
        f"<th>{h}</th>" for h in ("Time (UTC)", "Event", "Release", "Node", "Revision", "Message")
    )
    body = "".join(_audit_row(r) for r in shown) or (
        '<tr><td colspan="6" class="muted">Nothing recorded yet.</td></tr>'
    )
    return (
        f'<section id="audit"><h2>Recent audit log <small>{len(shown)}</small></h2>'
        f'<table class="grid audit"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></section>"
    )


def fragment(status: Mapping[str, Any], events: Sequence[object], now: float) -> str:
    """The live part of the page, re-fetched every few seconds."""
    return (
        f'<p class="summary" data-updated="{esc(iso(now))}">{esc(summary(status))}'
        f' <span class="muted updated">updated {esc(iso(now))}</span></p>'
        + nodes_section(node_rows(status, now))
        + releases_section(release_rows(status, now))
        + audit_section(audit_rows(events))
    )


def page(live_html: str, nonce: str) -> str:
    return Template(asset("templates/page.html")).substitute(
        css=asset("static/dashboard.css"),
        js=asset("static/dashboard.js"),
        nonce=esc(nonce),
        live=live_html,
    )


def login_page(error: str | None, nonce: str) -> str:
    err = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    return Template(asset("templates/login.html")).substitute(
        css=asset("static/dashboard.css"), nonce=esc(nonce), error=err
    )


def message_page(title: str, text: str, nonce: str) -> str:
    return Template(asset("templates/message.html")).substitute(
        css=asset("static/dashboard.css"), nonce=esc(nonce), title=esc(title), text=esc(text)
    )
