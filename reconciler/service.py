"""``fleetkeeper serve``: wire config -> store -> source -> loop -> API -> uvicorn, in one process.

One asyncio event loop runs the HTTP server, the git watcher and the reconcile loop
(whose passes run in a worker thread). SIGTERM or SIGINT stops all three: the server
stops accepting, waiting long-polls are released at once, in-flight requests finish
(at most ``GRACE_SECONDS``), the store is closed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.routing import BaseRoute

from reconciler.api import ApiContext, ApiSettings, create_app
from reconciler.api.admin import fleet_status
from reconciler.api.body import parse_json
from reconciler.api.controls import control_request, parse_action, record_control
from reconciler.api.errors import ApiError
from reconciler.api.metrics import MeteredStore, Metrics
from reconciler.approval.engine import Approver
from reconciler.config import Config
from reconciler.errors import ConfigError, Waiting
from reconciler.evidence import EvidenceSource
from reconciler.garbage import keep_collections_short
from reconciler.heap import keep_heap_trimmed, limit_malloc_arenas
from reconciler.httpserver import raise_open_file_limit, server_config
from reconciler.loop.reconciler import PassResult, Reconciler
from reconciler.notify.sender import Notifier
from reconciler.signing import DocumentSigner, load_or_create_key
from reconciler.source import GitSource
from reconciler.store import open_store, redact_url
from reconciler.store.base import AuditEvent
from reconciler.store.files import private_dir

if TYPE_CHECKING:
    from reconciler.replicas.serving import Replica

log = logging.getLogger(__name__)

GRACE_SECONDS = 5
# Idle keep-alive connections stay open this long: longer than an agent's 15 s heartbeat
# (uvicorn's default 5 s closed every heartbeat connection: one TCP accept per report,
# and under load a full accept queue; nginx's default is also 75 s)
KEEP_ALIVE_SECONDS = 75
SWITCH_INTERVAL = 0.001
NO_AUTOMATIC_FULL_GC = 2**31 - 1
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
DASHBOARD_AUDIT_WINDOW = 7 * 86400


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"listen: cannot bind {host}:{port}: {exc.strerror}") from exc
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def dashboard_routes(ctx: ApiContext) -> Sequence[BaseRoute]:
    """The dashboard's routes at ``/`` when its package is present."""
    try:
        from reconciler.dashboard import routes
    except ImportError:
        return ()

    async def get_status() -> dict[str, Any]:
        return await asyncio.to_thread(fleet_status, ctx)

    async def get_audit() -> list[AuditEvent]:
        since = ctx.clock() - DASHBOARD_AUDIT_WINDOW
        return list(await asyncio.to_thread(ctx.store.audit, since, 1000))

    async def control(name: str, action: str, raw: bytes, address: str | None) -> tuple[int, Any]:
        try:
            body = parse_json(raw, "rollout-control-request")
            req = control_request(
                name,
                parse_action(action),
                _text(body.get("reason")),
                _text(body.get("node")),
                _text(body.get("by")) or "dashboard",
                address,
            )
            return 200, await asyncio.to_thread(record_control, ctx, req)
        except ApiError as exc:
            return exc.status, {"error": exc.code, "message": exc.message}

    return routes(get_status, get_audit, ctx.settings.admin_token, control=control)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class _MeteredReconciler(Reconciler):
    """The loop with each pass timed into the reconcile-duration histogram."""

    metrics: Metrics

    def reconcile_once(self) -> PassResult:
        with self.metrics.reconcile_seconds.time():
            return super().reconcile_once()


class _MeteredSource(GitSource):
    """The source with each mirror fetch timed, and failures counted."""

    metrics: Metrics

    def fetch(self) -> None:
        if not self.is_mirror:
            return
        with self.metrics.fetch_seconds.time():
            try:
                super().fetch()
            except Waiting:
                self.metrics.fetch_failures.inc()
                raise


async def serve(config: Config, on_listening: Callable[[str], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT (or a fatal error in one of the parts)."""
    metrics = Metrics()
    private_dir(config.state_dir)  # git mirrors and (by default) state.db live here
    for r in config.notifications:  # every receiver shows in /metrics from the start
        for outcome in ("delivered", "failed"):
            metrics.notifications.labels(receiver=r.name, result=outcome)
    notifier = Notifier(config.notifications, metrics.count_notification)
    replica: Replica | None = None
    if config.database_url.startswith(("postgresql://", "postgres://")):
        from reconciler.replicas.serving import Replica  # psycopg: the postgres extra

        replica = Replica(config, metrics, [notifier.submit])
        store: MeteredStore = replica.store
    else:
        store = MeteredStore(open_store(config.database_url), metrics, [notifier.submit])
    metrics.gc_pauses.install()
    try:
        source = _MeteredSource(config.repo, config.state_dir, config.branch)
        source.metrics = metrics
        key, key_path = load_or_create_key(config.signing_key_file, config.state_dir)
        evidence = EvidenceSource(source.repository().path)
        signer = DocumentSigner(key, config.desired_validity, evidence)
        log.info(
            "signing desired state with %s (%s): %s", signer.keyid, key_path, signer.public_line
        )
        ctx = ApiContext.load(store, ApiSettings.from_config(config), metrics, signer)
        reconciler = _MeteredReconciler(
            config,
            store,
            source,
            notify=ctx.hub.notify_from_thread,
            approver=Approver(),
            reports=ctx.reports,
            publish=ctx.hub.publish_from_thread,
        )
        reconciler.metrics = metrics
        ctx.spec = reconciler.spec
        ctx.wake = reconciler.wake
        ctx.registered = reconciler.working.nodes_changed
        ctx.trigger = source.trigger
        ctx.ready = lambda: bool(reconciler.first_pass_done)
        sock = bind(config.listen_host, config.listen_port)
        host, port = sock.getsockname()[:2]
        url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        if replica is not None:
            replica.serve_api(ctx, reconciler, source, f"{socket.gethostname()}:{port}", url)
        else:
            metrics.leader.set(1)  # the single process always leads
            ctx.rollouts = reconciler.working.rollouts  # its loop holds them
        app = create_app(ctx, dashboard_routes(ctx))
        raise_open_file_limit(config.max_connections)
        server = _Server(server_config(app, config, graceful_shutdown=GRACE_SECONDS))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "fleetkeeper serving %s on %s (store %s)",
            config.repo,
            url,
            redact_url(config.database_url)
            + ("" if replica is None else f", replica {replica.name}"),
        )
        if on_listening is not None:
            on_listening(url)
        parts: dict[str, Coroutine[Any, Any, None]] = {
            "http": server.serve(sockets=[sock]),
            "last-seen": ctx.reports.run(stop),
            "gc": keep_collections_short(stop, ctx.ready, config.gc_freeze_seconds),
            "heap": keep_heap_trimmed(stop),
            "notify": notifier.run(stop),
        }
        if replica is not None:  # the loop and the watcher run only while it leads
            parts.update(replica.parts(stop))
        else:
            parts["reconcile"] = reconciler.run(stop)
            parts["watch"] = source.watch(reconciler.wake, stop, config.poll_interval)
        tasks = {asyncio.create_task(c, name=n): n for n, c in parts.items()}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        started = time.monotonic()
        stop.set()
        server.should_exit = True
        ctx.hub.close()  # release long-polls now rather than after their wait
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()
        log.info("fleetkeeper stopped in %.2fs", time.monotonic() - started)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s stopped with an error", tasks[task], exc_info=result)
        if failed:
            raise failed[0].exception() or RuntimeError("a part of the reconciler stopped")
    finally:
        if replica is not None:
            replica.close()
        store.close()
        metrics.gc_pauses.uninstall()


def run(config: Config, on_listening: Callable[[str], None] | None = None) -> None:
    """Blocking entry point: uvloop when it is installed, else the default loop."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    # A reconcile pass is pure Python in a worker thread; the event loop then waits for
    # the GIL up to the switch interval each time it wakes. 1 ms instead of 5 ms keeps
    # heartbeat latency low while a large pass runs.
    sys.setswitchinterval(SWITCH_INTERVAL)
    limit_malloc_arenas()  # before the first thread: each may otherwise get its own
    # Python's full (oldest-generation) collection walks every tracked object: with
    # 10,000 agents that is millions (documents, reports, connections) and about a
    # second with everything stopped, and it ran every few seconds under load (each
    # pass promotes new long-lived objects). The young generations stay automatic
    # (they catch nearly all cyclic garbage); the full collection runs on a timer, and
    # survivors are frozen out of the young ones (keep_collections_short).
    gc.set_threshold(*gc.get_threshold()[:2], NO_AUTOMATIC_FULL_GC)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, on_listening))
