"""The whole service on a three-node RabbitMQ cluster when a node fails (issue 15), with ledgers.

The cluster (``rabbitmq_cluster``: three nodes of Debian's RabbitMQ that the run starts and stops
itself) carries the five services' queues as quorum queues of three replicas; every service is
given the three nodes' addresses in ``RABBITMQ_URL`` and connects to the first that answers.
Twenty students send 1,000 webhook events (texts and questions for the policy, out of hours:
a case, an out-of-hours reply and a policy reply each from dispatch to the fake LINE platform)
while a node fails. The ledger's ``published`` are the events sent, ``confirmed`` those of
requests answered 200 (a 503 is sent again, as LINE does), ``consumed`` every delivery triage's
handler saw and ``applied`` every effect found (a stored message per text, a policy text at the
student per question). Each scenario ends with lost = unexpected = duplicate effects = 0 and
prints its figures: events, seconds until webhooks were accepted and handled again, 503s,
redeliveries.

Scenarios: the node leading the webhook shard queues killed (SIGKILL) mid-stream, then started
again on its data, rejoining; a node cut off from the others and its clients (its Erlang VM
paused with SIGSTOP) and healed (SIGCONT); every node restarted in turn under load.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from soudan_allinone.testing import (
    Stack,
    Students,
    check_every_event_once,
    send_student_events,
    stack_on,
    watching_triage,
)
from soudan_fakeline import new_user_id
from soudan_shared.store import MEMORY_URL
from soudan_shared.testing.cluster import Cluster, Node
from soudan_shared.testing.waiting import wait_until
from soudan_shared.topology import Topology, line_event_queue

pytestmark = [pytest.mark.cluster, pytest.mark.fault, pytest.mark.timeout(600)]

SECRET = "cluster-channel-secret"
TOKEN = "cluster-access-token"
STUDENTS = 20
EVENTS_EACH = 50  # 1,000 events per scenario
GROUP_SIZE = 3


@dataclass
class ClusterRig:
    stack: Stack
    topology: Topology
    cluster: Cluster

    @property
    def shard_queues(self) -> list[str]:
        shards = range(self.topology.line_event_shards)
        return [self.topology.queue(line_event_queue(i)) for i in shards]

    async def leaders(self, via: Node | None = None) -> Counter[str]:
        """How many webhook shard queues each node leads."""

        def look() -> Counter[str]:
            return Counter(self.cluster.queue_leader(q, via).name for q in self.shard_queues)

        return await asyncio.to_thread(look)


@pytest.fixture(scope="module")
async def cluster_rig(
    rabbitmq_cluster: Cluster,
    smtp_inbox: tuple[Any, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ClusterRig]:
    """The end-to-end stack on the cluster, every service given the three nodes' addresses;
    the in-process store (the broker is what fails here)."""
    async with stack_on(
        tmp_path_factory.mktemp("cluster"),
        rabbitmq_url=rabbitmq_cluster.rabbitmq_url,
        services_rabbitmq_url=rabbitmq_cluster.rabbitmq_url,
        mongodb_url=MEMORY_URL,
        smtp_inbox=smtp_inbox,
        secret=SECRET,
        token=TOKEN,
        line_timeout=5.0,
        env={"RABBITMQ_QUORUM_GROUP_SIZE": str(GROUP_SIZE)},
    ) as (stack, topology):
        yield ClusterRig(stack, topology, rabbitmq_cluster)


@dataclass
class Load:
    """1,000 events from twenty students, sent in the background."""

    students: Students
    users: list[str]
    senders: list[asyncio.Task[None]]

    @classmethod
    def start(cls, stack: Stack, *, pause: float = 0.0) -> Load:
        stack.at(stack.closed_moment())
        students = Students(stack, give_up_after=120)
        users = [new_user_id() for _ in range(STUDENTS)]
        senders = [
            asyncio.create_task(send_student_events(students, u, EVENTS_EACH, pause=pause))
            for u in users
        ]
        return cls(students, users, senders)

    @property
    def confirmed(self) -> int:
        return len(self.students.ledger.confirmed)

    @property
    def consumed(self) -> int:
        return sum(self.students.ledger.consumed.values())

    async def flowing(self, at_least: int) -> None:
        await wait_until(
            lambda: self.confirmed >= at_least, timeout=60, message=f"{at_least} events taken"
        )

    async def recovered(self, since: float) -> tuple[float, float]:
        """Seconds from ``since`` until webhooks are answered 200 and triage handles events
        again (20 more of each than at the call)."""
        confirmed, consumed = self.confirmed, self.consumed
        await wait_until(
            lambda: self.confirmed >= confirmed + 20,
            timeout=120,
            interval=0.05,
            message="webhooks answered 200 again",
        )
        accepted = time.monotonic() - since
        await wait_until(
            lambda: self.consumed >= consumed + 20,
            timeout=120,
            interval=0.05,
            message="triage handling events again",
        )
        return accepted, time.monotonic() - since

    async def finish(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.senders), 300)
        await self.students.wait_settled(timeout=180)
        assert self.confirmed == STUDENTS * EVENTS_EACH

    def figures(self) -> str:
        ledger = self.students.ledger
        return (
            f"events={len(ledger.published)} 503s={self.students.answers[503]} "
            f"redeliveries={ledger.redeliveries}"
        )


async def test_quorum_queues_are_declared_with_a_replica_on_each_of_the_three_nodes(
    cluster_rig: ClusterRig,
) -> None:
    cluster = cluster_rig.cluster
    names = {node.name for node in cluster.nodes}
    for queue in cluster_rig.shard_queues:
        members = await asyncio.to_thread(cluster.queue_members, queue)
        assert sorted(members) == sorted(names), (queue, members)


async def test_every_webhook_answered_200_reaches_line_once_when_the_shard_queues_leader_is_killed(
    cluster_rig: ClusterRig,
) -> None:
    stack, cluster = cluster_rig.stack, cluster_rig.cluster
    leaders = await cluster_rig.leaders()
    victim = cluster.node(leaders.most_common(1)[0][0])

    load = Load.start(stack)
    with watching_triage(stack, load.students.ledger):
        await load.flowing(200)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, victim)  # SIGKILL of its beam.smp: no goodbye
        accepted, handled = await load.recovered(killed_at)
        survivor = next(n for n in cluster.nodes if n is not victim)
        moved = await cluster_rig.leaders(survivor)
        assert victim.name not in moved, moved
        started_at = time.monotonic()
        await asyncio.to_thread(cluster.start_node, victim)  # on its data: it rejoins
        await asyncio.to_thread(cluster.wait_running, survivor, 3)
        rejoined = time.monotonic() - started_at
        await load.finish()

    print(
        f"leader killed: {victim.name} led {leaders[victim.name]} of "
        f"{len(cluster_rig.shard_queues)} shard queues; {load.figures()} "
        f"accepting_again_s={accepted:.2f} handling_again_s={handled:.2f} "
        f"rejoined_s={rejoined:.2f} leaders_after={dict(moved)}"
    )
    assert load.students.ledger.redeliveries > 0, "the kill caught deliveries in flight"
    await check_every_event_once(load.students, load.users)


async def test_every_webhook_answered_200_reaches_line_once_when_a_node_is_cut_off_and_healed(
    cluster_rig: ClusterRig,
) -> None:
    stack, cluster = cluster_rig.stack, cluster_rig.cluster
    leaders = await cluster_rig.leaders()
    cut = cluster.node(leaders.most_common(1)[0][0])
    others = [n for n in cluster.nodes if n is not cut]

    load = Load.start(stack)
    with watching_triage(stack, load.students.ledger):
        await load.flowing(200)
        cut_at = time.monotonic()
        cluster.kill(cut, signal.SIGSTOP)  # frozen: no answer to its peers or its clients
        try:
            accepted, handled = await load.recovered(cut_at)

            async def seen_gone() -> bool:
                return cut.name not in await asyncio.to_thread(cluster.running_nodes, others[0])

            await wait_until(seen_gone, timeout=60, message=f"the others see {cut.name} gone")

            async def moved_off() -> Counter[str] | None:
                try:
                    moved = await cluster_rig.leaders(others[0])
                except LookupError:  # a queue still electing its new leader is not listed yet
                    return None
                return moved if cut.name not in moved else None

            moved = await wait_until(
                moved_off, timeout=60, message=f"every shard queue led off {cut.name}"
            )
        finally:
            cluster.kill(cut, signal.SIGCONT)
        healed_at = time.monotonic()
        await asyncio.to_thread(cluster.wait_running, others[0], 3, 240)  # autoheal
        healed = time.monotonic() - healed_at
        await load.finish()

    print(
        f"node cut off: {cut.name} led {leaders[cut.name]} of {len(cluster_rig.shard_queues)} "
        f"shard queues; {load.figures()} accepting_again_s={accepted:.2f} "
        f"handling_again_s={handled:.2f} cut_off_s={healed_at - cut_at:.2f} "
        f"rejoined_s={healed:.2f} leaders_after={dict(moved)}"
    )
    await check_every_event_once(load.students, load.users)


async def test_every_webhook_answered_200_reaches_line_once_through_a_rolling_restart(
    cluster_rig: ClusterRig,
) -> None:
    stack, cluster = cluster_rig.stack, cluster_rig.cluster
    # Paced so the 1,000 events span the three restarts.
    load = Load.start(stack, pause=3.0)
    restarts: list[str] = []
    with watching_triage(stack, load.students.ledger):
        await load.flowing(100)
        started = time.monotonic()
        for node in cluster.nodes:
            others = [n for n in cluster.nodes if n is not node]
            await asyncio.to_thread(cluster.wait_quorum_safe, node)
            down_at = time.monotonic()
            await asyncio.to_thread(cluster.stop_node, node)  # as an upgrade stops it
            await asyncio.to_thread(cluster.start_node, node)
            await asyncio.to_thread(cluster.wait_running, others[0], 3)
            restarts.append(f"{node.name}:{time.monotonic() - down_at:.1f}s")
        rolled = time.monotonic() - started
        during = load.confirmed
        await load.finish()

    print(
        f"rolling restart: {' '.join(restarts)} in {rolled:.1f}s; {load.figures()} "
        f"events_taken_before_the_last_restart_ended={during}"
    )
    assert during < STUDENTS * EVENTS_EACH, "the load lasted through the restarts"
    await check_every_event_once(load.students, load.users)
