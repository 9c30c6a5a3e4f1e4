"""Publish the events of one webhook request: all confirmed within a deadline, or a failure.

Events of different users are published concurrently; the events of one user (one ordering
key: the same key that picks the shard queue) are published one after another, each only once
the previous one is confirmed, so the shard queue holds them in request order. The deadline is
for the whole request, not for each publish: a user with five events still gets an answer
within ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from soudan_shared.bus import PublishFailed
from soudan_shared.contracts import LineEventReceived
from soudan_shared.facts import Publisher
from soudan_shared.topology import ordering_key

log = structlog.get_logger(__name__)

_GRACE = 0.05


async def publish_in_user_order(
    publisher: Publisher, messages: Sequence[LineEventReceived], *, timeout: float
) -> None:
    """Return once the broker confirmed every message; raise :class:`PublishFailed` otherwise."""
    chains: dict[str, list[LineEventReceived]] = {}
    for message in messages:
        chains.setdefault(ordering_key(message), []).append(message)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def in_order(chain: list[LineEventReceived]) -> None:
        for message in chain:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishFailed(f"no confirm within {timeout:g}s")
            try:
                await publisher.publish(message, timeout=remaining)
            except PublishFailed:
                raise
            except Exception as exc:
                log.exception("publish_crashed")
                raise PublishFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc

    try:
        # A safety net for a publisher that overruns its own timeout; the bus's timeout fires
        # first, so its failure metrics see it.
        async with asyncio.timeout_at(deadline + _GRACE):
            if len(chains) == 1:
                await in_order(next(iter(chains.values())))
                return
            results = await asyncio.gather(
                *(in_order(chain) for chain in chains.values()), return_exceptions=True
            )
    except TimeoutError as exc:
        raise PublishFailed(f"no confirm within {timeout:g}s") from exc
    for result in results:
        if isinstance(result, PublishFailed):
            raise result
        if isinstance(result, BaseException):
            raise PublishFailed(type(result).__name__) from result
