"""Done-when of issue #22 with real processes: three ``quartsig serve`` nodes with the bot on a
private Redis and one SQLite file, the Telegram stand-in, rules on several keys, a webhook
receiver that checks signatures; the leader SIGKILLed and the next one SIGSTOPped past its
lease during a burst of changes. Every transition is delivered exactly once through both
channels: none lost, none twice.

Telegram has no idempotency key: a node killed between Telegram's answer and the row's mark
would send that message again when its claim's lease ends (docs/alerts.md says so). The
kill and the freeze land where no send is in flight (every delivery so far marked sent),
which is what the test can promise; a webhook in that window is deduped by its id.

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
import re
import signal
import urllib.request
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from quartsig.cluster.deliveries import group_for
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.telegram.client import webhook_path, webhook_secret
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


#: One trigger's line in an alert or a digest: ``EURUSD 1h: SELL → NEUTRAL``.
TELEGRAM_LINE = re.compile(r"(\w+) 1h: (\w+) → (\w+)")


def _telegram_moves(telegram: TelegramStandin, chat: int) -> Counter[tuple[str, str, str]]:
    by_ticker = {ticker.rpartition(":")[2]: ticker for ticker in KEYS}
    return Counter((by_ticker.get(ticker, ticker), before, after)
                   for message in telegram.sent(chat)
                   for ticker, before, after in TELEGRAM_LINE.findall(message["text"]))


def _get(node: QuartsigServer, token: str, path: str) -> Any:
    request = urllib.request.Request(f"{node.url}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def _settled(cluster: Cluster, triggers: int) -> None:
    await until(blocking(lambda: _all_sent(cluster, triggers)), WAIT,
                what=f"{triggers} triggers written and every delivery marked sent")


def _all_sent(cluster: Cluster, triggers: int) -> bool:
    """``triggers`` written and every delivery of each marked sent: no send is in flight."""
    for node in cluster.nodes:
        if node.process is None or node.process.poll() is not None:
            continue
        try:
            history = _get(node, cluster.token, "/api/alerts/history?limit=500")["triggers"]
        except OSError:
            continue  # a node frozen or going: ask another
        return len(history) == triggers and all(
            d["status"] == "sent" for t in history for d in t["deliveries"])
    return False


async def test_failovers_mid_burst_deliver_every_trigger_exactly_once(
        cluster: Cluster) -> None:
    with TelegramStandin.running(limits=True) as telegram:  # Telegram's limits enforced
        await _failovers_mid_burst(cluster, telegram)


async def _failovers_mid_burst(cluster: Cluster, telegram: TelegramStandin) -> None:
    cluster.env.update(QUARTSIG_ALERTS_RELOAD="0.5", QUARTSIG_BOT_TOKEN=TOKEN,
                       QUARTSIG_BOT_API_URL=telegram.url)
    await _set_all(cluster, START)
    first = cluster.add_node("a")
    assert await one_leader(cluster) is first
    async with receiver("whsec_") as hook:
        channel = await asyncio.to_thread(_api, first, cluster.token, "/api/alerts/channels",
                                          {"kind": "webhook", "url": hook.url("/c")})
        hook.secret = channel["secret"]
        # The account's user says /start to the bot: their chat becomes an alert channel.
        status = await asyncio.to_thread(
            telegram.push, telegram.message(42, "/start"),
            url=f"{first.url}/telegram/{webhook_path(TOKEN)}", secret=webhook_secret(TOKEN))
        assert status == 200
        await asyncio.to_thread(telegram.wait_sent, 42, 1)
        greeted = len(telegram.sent(42))
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
            if number == 3:  # nothing in flight (see the module's doc)
                await _settled(cluster, sum(expected.values()) - len(KEYS))
            await _set_all(cluster, rating)
            if number == 3:  # the leader dies while the step's change is on its way
                leader.kill()
                await until(blocking(lambda dead=leader: len(cluster.leaders()) == 1
                                     and dead not in cluster.leaders()), WAIT,
                            what="a new leader after the SIGKILL")
            await until(lambda wanted=expected: _moves(hook) >= wanted, WAIT,
                        what=f"step {number}'s alerts")
            await until(lambda wanted=expected: _telegram_moves(telegram, 42) >= wanted, WAIT,
                        what=f"step {number}'s Telegram alerts")
            before = after
            if number == 5:  # the next one freezes past its lease (between steps: a frozen
                # process holding SQLite's write lock would stall every node's writes)
                await _settled(cluster, sum(expected.values()))
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
        assert _telegram_moves(telegram, 42) == expected  # and through the bot
        assert telegram.too_many() == []  # the nodes' shared pace kept Telegram's limits
        alerts = telegram.sent(42)[greeted:]
        assert len(alerts) < sum(expected.values())  # bursts folded into digests
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
