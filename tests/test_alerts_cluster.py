"""Done-when of issue #22 with real processes: three ``quartsig serve`` nodes on a private
Redis and one SQLite file, rules on several keys, a webhook receiver that checks signatures;
the leader SIGKILLed and the next one SIGSTOPped past its lease during a burst of changes.
Every transition is delivered exactly once: none lost, none twice.

The SIGKILL lands right after a step's values were set, while its change is on its way
(published or not, recorded or not: the next leader records what the dead one did not). The
SIGSTOP lands between steps: a frozen process that holds the database's write lock (SQLite's
file lock, PostgreSQL's fence row) stalls every node's writes until it wakes or its
connection drops, which this test does not measure.

The second scenario is the delivery stream's: two nodes consume the Redis stream that
announces each written trigger; the receiver holds every request unanswered, the node with
the announcements pending is SIGKILLed mid-send, and the other one takes its entries with
XAUTOCLAIM once they have been idle past the claim lease (the database poll is set to an
hour, so nothing else could deliver them): each webhook is received exactly once by its
``webhook-id``; the requests the dead node had in flight, which it never saw answered, are
sent again with the same id."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from quartsig.cluster.deliveries import group_for
from tests.support.processes import QuartsigServer
from tests.support.webhooks import Receiver, receiver
from tests.test_cluster import (  # the cluster's fixtures and helpers, reused as they are
    Cluster,
    blocking,
    cluster,
    one_leader,
    redis_server,
    until,
)

pytestmark = [pytest.mark.e2e]
__all__ = ["cluster", "redis_server"]  # fixtures

KEYS = ["FX_IDC:EURUSD", "FX_IDC:USDJPY", "FX_IDC:GBPUSD", "FX_IDC:AUDUSD"]
#: Ratings whose labels make 8 distinct transitions (a trigger's identity includes the
#: transition and the bar: equal transitions in one bar would be one trigger).
START = -0.7  # STRONG_SELL
STEPS = [-0.3, 0.0, 0.3, 0.7, 0.3, 0.0, -0.3, -0.7]
LABELS = {-0.7: "STRONG_SELL", -0.3: "SELL", 0.0: "NEUTRAL", 0.3: "BUY", 0.7: "STRONG_BUY"}
WAIT = 60.0
#: The delivery stream's consumer group of nodes whose only channel is the webhook.
WEBHOOKS = group_for(["webhook"])


def _api(node: QuartsigServer, token: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"{node.url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def _set_all(cluster: Cluster, rating: float) -> None:
    for ticker in KEYS:
        await asyncio.to_thread(cluster.standin.set_values, ticker, "1h",
                                {"Recommend.All": rating})


def _moves(hook: Receiver) -> Counter[tuple[str, str, str]]:
    return Counter((r.body["symbol"], r.body["from"], r.body["to"]) for r in hook.valid())


async def test_failovers_mid_burst_deliver_every_trigger_exactly_once(
        cluster: Cluster) -> None:
    cluster.env["QUARTSIG_ALERTS_RELOAD"] = "0.5"
    await _set_all(cluster, START)
    first = cluster.add_node("a")
    assert await one_leader(cluster) is first
    async with receiver("whsec_") as hook:
        channel = await asyncio.to_thread(_api, first, cluster.token, "/api/alerts/channels",
                                          {"kind": "webhook", "url": hook.url("/c")})
        hook.secret = channel["secret"]
        for ticker in KEYS:
            await asyncio.to_thread(_api, first, cluster.token, "/api/alerts", {
                "keys": [["summary", ticker, "1h"]], "condition": {"kind": "label"}})

        @blocking
        def collected() -> bool:  # the leader's rules are loaded: it collects their keys
            asked = {t for r in cluster.standin.requests() for t in r.get("tickers", [])}
            return set(KEYS) <= asked

        await until(collected, WAIT, what="the rules' keys collected with no board open")
        cluster.add_node("b")
        cluster.add_node("c")
        expected: Counter[tuple[str, str, str]] = Counter()
        before = LABELS[START]
        paused: QuartsigServer | None = None
        for number, rating in enumerate(STEPS, 1):
            after = LABELS[rating]
            expected.update((ticker, before, after) for ticker in KEYS)
            leader = await one_leader(cluster)
            await _set_all(cluster, rating)
            if number == 3:  # the leader dies while the step's change is on its way
                leader.kill()
                await until(blocking(lambda dead=leader: len(cluster.leaders()) == 1
                                     and dead not in cluster.leaders()), WAIT,
                            what="a new leader after the SIGKILL")
            await until(lambda wanted=expected: _moves(hook) >= wanted, WAIT,
                        what=f"step {number}'s alerts")
            before = after
            if number == 5:  # the next one freezes past its lease (between steps: a frozen
                # process holding SQLite's write lock would stall every node's writes)
                paused = await one_leader(cluster)
                assert paused.process is not None
                paused.process.send_signal(signal.SIGSTOP)
                await until(blocking(lambda frozen=paused: any(
                    n is not frozen for n in cluster.leaders())), WAIT,
                    what="a new leader while one is paused")
        assert paused is not None and paused.process is not None
        paused.process.send_signal(signal.SIGCONT)  # it wakes up with a stale term
        await until(blocking(lambda: len(cluster.leaders()) == 1), WAIT,
                    what="one leader after the paused node woke")
        moves = _moves(hook)
        assert moves == expected  # every transition of every key, each exactly once
        assert all(r.valid for r in hook.received)
        ids = Counter(r.id for r in hook.received)
        assert max(ids.values()) == 1, "a webhook-id was sent twice"


async def _pending_by_consumer(client: aioredis.Redis, prefix: str) -> dict[str, int]:
    found: Any = await client.xinfo_consumers(f"{prefix}deliveries", WEBHOOKS)
    return {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): c["pending"]
            for c in found}


async def test_a_killed_delivery_consumers_entries_are_claimed_by_another_node(
        cluster: Cluster) -> None:
    cluster.env.update(QUARTSIG_ALERTS_RELOAD="0.5", QUARTSIG_ALERTS_LEASE="6",
                       QUARTSIG_ALERTS_POLL="3600")  # the lease exceeds a send's 5 s timeout
    prefix = cluster.env.get("QUARTSIG_REDIS_PREFIX", "quartsig:")
    await _set_all(cluster, START)
    first = cluster.add_node("a")
    assert await one_leader(cluster) is first
    client = aioredis.Redis.from_url(cluster.redis.url)
    async with receiver("whsec_") as hook:
        try:
            channel = await asyncio.to_thread(_api, first, cluster.token,
                                              "/api/alerts/channels",
                                              {"kind": "webhook", "url": hook.url("/c")})
            hook.secret = channel["secret"]
            for ticker in KEYS:
                await asyncio.to_thread(_api, first, cluster.token, "/api/alerts", {
                    "keys": [["summary", ticker, "1h"]], "condition": {"kind": "label"}})

            @blocking
            def collected() -> bool:
                asked = {t for r in cluster.standin.requests() for t in r.get("tickers", [])}
                return set(KEYS) <= asked

            await until(collected, WAIT, what="the rules' keys collected")
            second = cluster.add_node("b")  # ready: its worker reads the stream too
            hook.hold()
            await _set_all(cluster, STEPS[0])
            expected = Counter((ticker, LABELS[START], LABELS[STEPS[0]]) for ticker in KEYS)
            await until(lambda: len(hook.waiting) == len(KEYS), WAIT,
                        what="every delivery sent and held unanswered")
            pending = await _pending_by_consumer(client, prefix)
            assert sum(pending.values()) == len(KEYS)  # read, none acknowledged
            victim_name = max(pending, key=lambda name: pending[name])
            held = await client.xpending_range(f"{prefix}deliveries", WEBHOOKS, "-", "+",
                                               100, consumername=victim_name)
            entries = dict(await client.xrange(f"{prefix}deliveries"))
            owed = {int(entries[h["message_id"]][b"trigger"]) for h in held}
            nodes = {node.process.pid: node for node in (first, second) if node.process}
            victim = nodes[int(victim_name.split(":")[1])]  # host:pid:random
            assert victim.process is not None
            victim.process.kill()
            await asyncio.to_thread(victim.process.wait, 30)
            await until(lambda: hook.gone() >= pending[victim_name], WAIT,
                        what="the dead node's requests seen abandoned")
            hook.release()
            await until(lambda: _moves(hook) >= expected, WAIT,
                        what="every alert received, the dead node's claimed by the other")

            async def settled() -> bool:
                after = await _pending_by_consumer(client, prefix)
                return after[victim_name] == 0 and sum(after.values()) == 0

            await until(settled, WAIT, what="every entry acknowledged, none left on the dead")
            assert _moves(hook) == expected
            ids = Counter(r.id for r in hook.received)
            assert max(ids.values()) == 1, "a webhook-id was received twice"
            assert all(r.valid for r in hook.received)
            # The dead node's requests never saw their answer: sent again, with the same id
            # (any other abandoned one timed out on a slow machine and was retried the same).
            assert owed <= {r.body["trigger"] for r in hook.abandoned}
            assert {r.id for r in hook.abandoned} <= set(ids)
        finally:
            hook.release()
            await client.aclose()
