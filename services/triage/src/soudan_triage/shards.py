"""Triage refuses a shard count that leaves LINE events unconsumed.

Ingress spreads the events over ``LINE_EVENT_SHARDS`` queues and triage consumes that many, so
both must be set alike. Every service declares the queues of its own count, and shard queues are
numbered from 0, so a queue numbered ``LINE_EVENT_SHARDS`` on the broker means that some service
(an ingress set higher, or a previous deployment that was) routes events where this triage would
never look. Triage then stops with one line saying what to do, rather than run beside a queue
that fills up unseen. A count lower than the broker's other services is harmless to triage
(its extra queues simply stay empty) and is not detected.
"""

from __future__ import annotations

import contextlib

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.channel import Channel
from soudan_shared.topology import Topology, line_event_queue


async def unconsumed_shard_queue(connection: AbstractConnection, topology: Topology) -> str | None:
    """The name of the first shard queue beyond ``topology``'s count if the broker has it."""
    name = topology.queue(line_event_queue(topology.line_event_shards))
    # A plain (not robust) channel: the broker closes it when the queue is missing, and it must
    # not be reopened.
    channel = Channel(connection)
    await channel.initialize()
    try:
        await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return None
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return name


def mismatch_message(topology: Topology, queue: str) -> str:
    shards = topology.line_event_shards
    return (
        f"LINE_EVENT_SHARDS={shards}, but the broker has the shard queue {queue}: another "
        f"service routes LINE events to more than {shards} shards, and those would never be "
        "consumed. Set the same LINE_EVENT_SHARDS in every service (after lowering it, let the "
        "queues beyond it drain and delete them); stopping"
    )
