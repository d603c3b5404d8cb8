"""What one kept-alive connection costs the server (``reconciler/httpserver.py``).

8,000 agents hold 16,000 connections, so every kilobyte a connection keeps is 16 MB of
the server's resident memory (issue 12: under 300 MB at 8,000 agents)."""

from __future__ import annotations

import asyncio
import collections
import tracemalloc
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from reconciler.httpserver import (
    DeadlineHttpTools,
    LightEvent,
    LightFlowControl,
    _Pipeline,
    protocol_with,
)

CONNECTIONS = 500
# measured: 2.0 KB with the deadline state in one slotted attribute, a list for the
# pipeline and the flow-control event made on demand; 4.9 KB before (a dict of its own
# per protocol, two deques)
MAX_BYTES_PER_CONNECTION = 2500


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


class _Transport(asyncio.Transport):
    """Just enough transport for ``connection_made``: no socket, no peer."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


def test_a_kept_alive_connection_costs_under_two_and_a_half_kilobytes() -> None:
    config = uvicorn.Config(_app, lifespan="off", loop="none")
    config.load()
    cls = protocol_with(10, 30, 16384)

    async def measure() -> float:
        state, loop = ServerState(), asyncio.get_running_loop()
        protocols = [cls(config, state, {}, loop) for _ in range(10)]  # warm the caches
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(CONNECTIONS):
                protocol = cls(config, state, {}, loop)
                protocol.connection_made(_Transport())
                protocols.append(protocol)
            cost = (tracemalloc.get_traced_memory()[0] - before) / CONNECTIONS
        finally:
            tracemalloc.stop()
        for protocol in protocols:
            protocol._cancel()  # the header deadline timers
        return cost

    cost = asyncio.run(measure())
    assert cost < MAX_BYTES_PER_CONNECTION, f"{cost:.0f} bytes per connection"


def test_the_protocol_keeps_its_attributes_in_shared_keys() -> None:
    """Past 30 instance attributes CPython gives each instance a whole dict: the test
    that names the cause when the size test above fails after an uvicorn upgrade."""
    config = uvicorn.Config(_app, lifespan="off", loop="none")
    config.load()

    async def count() -> int:
        protocol: DeadlineHttpTools = protocol_with(10, 30, 16384)(
            config, ServerState(), {}, asyncio.get_running_loop()
        )
        protocol.connection_made(_Transport())
        protocol.on_message_begin()  # sets url, headers, scope
        protocol._cancel()
        return len(vars(protocol))

    assert asyncio.run(count()) <= 30


def test_the_pipeline_list_is_first_in_first_out_like_uvicorns_deque() -> None:
    ours, theirs = _Pipeline(), collections.deque[int]()
    for item in range(5):
        ours.appendleft(item)
        theirs.appendleft(item)
    assert bool(ours) and len(ours) == len(theirs) == 5
    assert [ours.pop() for _ in range(5)] == [theirs.pop() for _ in range(5)] == list(range(5))
    assert not ours


def test_flow_control_waits_only_while_writing_is_paused() -> None:
    async def run() -> None:
        transport = _Transport()
        flow = LightFlowControl(transport)
        await asyncio.wait_for(flow.drain(), 1)  # never paused: no event, no wait
        flow.pause_writing()
        flow.pause_writing()  # twice, as a transport may
        waiter = asyncio.ensure_future(flow.drain())
        await asyncio.sleep(0.01)
        assert not waiter.done(), "drain returned while writing was paused"
        flow.resume_writing()
        await asyncio.wait_for(waiter, 1)
        await asyncio.wait_for(flow.drain(), 1)  # resumed: returns at once
        flow.resume_writing()  # resuming when not paused changes nothing
        assert not flow.write_paused

    asyncio.run(run())


def test_the_request_event_behaves_as_asyncio_event() -> None:
    """The same script on both: what each ``wait`` returns, and when."""

    async def script(event: Any) -> list[str]:
        seen: list[str] = []

        async def waiter(name: str) -> None:
            await event.wait()
            seen.append(name)

        assert not event.is_set()
        first, second = (asyncio.ensure_future(waiter(n)) for n in ("a", "b"))
        gone = asyncio.ensure_future(waiter("cancelled"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        seen.append("set")
        event.set()
        event.set()  # twice changes nothing
        await asyncio.gather(first, second)
        assert event.is_set()
        await asyncio.wait_for(event.wait(), 1)  # set: at once
        event.clear()
        late = asyncio.ensure_future(waiter("late"))
        await asyncio.sleep(0.01)
        seen.append("cleared" if not late.done() else "did not wait")
        event.set()
        event.clear()  # cleared again before the waiter ran: it still wakes
        await asyncio.wait_for(late, 1)
        return seen

    ours, theirs = asyncio.run(script(LightEvent())), asyncio.run(script(asyncio.Event()))
    assert ours == theirs == ["set", "a", "b", "cleared", "late"]
