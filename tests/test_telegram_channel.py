"""The ``telegram`` alert channel against the Telegram stand-in, with a real SQLite database: what
a message says and its two buttons, a digest, and what each of Telegram's answers becomes (429:
retry when told and the chat held on the shared pace, 403: blocked and the chat unreachable,
400: failed, 5xx and timeouts: retry). The pace runs on an injected clock and the channel's
sleep is recorded, so nothing here waits for real time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from tortoise.context import TortoiseContext

from quartsig.access import chats
from quartsig.access.tokens import TokenAuthority
from quartsig.alerts import storage
from quartsig.alerts.channels import Digesting, Message, Outcome, Target
from quartsig.alerts.delivery import Deliverer
from quartsig.alerts.evaluation import Evaluator
from quartsig.alerts.storage import AlertChannel, AlertDelivery
from quartsig.cluster.pace import CHAT_GAP, MemoryPace, RedisPace
from quartsig.demo.telegram import TOKEN, TelegramStandin
from quartsig.domain.model import Key
from quartsig.telegram import subscriptions
from quartsig.telegram.channel import DIGEST_LINES, MUTE, NO_BOT_RETRY, TelegramChannel
from quartsig.telegram.client import make_bot
from quartsig.telegram.service import BotService
from tests.support.alertsdb import alerts_database
from tests.support.clocks import HandClock
from tests.support.redisdb import REDIS_URL

CHAT = 7007
KEY = Fernet.generate_key().decode()
BASE = "http://board.test"
T0 = 1_700_000_000.0
EURUSD = Key("summary", "FX_IDC:EURUSD", "1h")




@pytest.fixture
def telegram() -> Iterator[TelegramStandin]:
    with TelegramStandin.running(hang=5.0) as standin:
        yield standin


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[TortoiseContext]:
    async with alerts_database(tmp_path, CHAT) as context:
        yield context


@pytest.fixture
async def service(telegram: TelegramStandin) -> AsyncIterator[BotService]:
    """A started bot's parts, without an app: its bot, its tokens, the board's address."""
    service = BotService(base_url=BASE, tokens=TokenAuthority([KEY], 3600))
    service.bot = make_bot(TOKEN, telegram.url, timeout=0.5)
    try:
        yield service
    finally:
        await service.bot.session.close()


class Channel:
    """The channel under test with its clock, its pace and the sleeps it asked for."""

    def __init__(self, service: BotService) -> None:
        self.clock = HandClock(T0)
        self.pace = MemoryPace(clock=self.clock)
        self.slept: list[float] = []
        self.channel = TelegramChannel(service, self.pace, sleep=self._sleep)

    async def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds


@pytest.fixture
def channel(service: BotService) -> Channel:
    return Channel(service)


def _message(rule: int = 5, text: str = "EURUSD 1h: NEUTRAL → BUY", **payload: Any) -> Message:
    return Message(id=f"msg_{rule}", text=text,
                   payload={"type": "alert.fired", "rule": rule, "profile": "summary",
                            "symbol": "FX_IDC:EURUSD", **payload})


TARGET = Target(1, "telegram", str(CHAT))


async def test_an_alert_has_escaped_html_and_both_buttons(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    sent = await channel.channel.send(_message(text="<b>X&Y</b> 1h: A → B"), TARGET)
    assert sent == Outcome("sent")
    [message] = telegram.sent(CHAT)
    assert message["parse_mode"] == "HTML"
    assert "&lt;b&gt;X&amp;Y&lt;/b&gt; 1h: A → B" in message["text"]
    [[board, mute]] = message["reply_markup"]["inline_keyboard"]
    assert board["text"] == "Open board" and board["url"].startswith(f"{BASE}/#token=")
    token = board["url"].partition("#token=")[2]
    assert TokenAuthority([KEY], 3600).verify(token) == CHAT  # a fresh token of the chat's
    assert (mute["text"], mute["callback_data"]) == (MUTE, "mute:5")


async def test_a_paused_rule_gets_no_mute_button(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    await channel.channel.send(_message(type="alert.paused"), TARGET)
    [message] = telegram.sent(CHAT)
    [[board]] = message["reply_markup"]["inline_keyboard"]
    assert board["text"] == "Open board" and "paused" in message["text"]


async def test_a_digest_is_one_message_with_a_capped_list(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    assert isinstance(channel.channel, Digesting)
    burst = [_message(rule=i, text=f"K{i} 1h: SELL → BUY") for i in range(DIGEST_LINES + 5)]
    assert await channel.channel.send_digest(burst, TARGET) == Outcome("sent")
    [message] = telegram.sent(CHAT)
    assert message["text"].startswith(f"🔔 <b>{DIGEST_LINES + 5} alerts</b>")
    assert "K0 1h" in message["text"] and f"K{DIGEST_LINES - 1} 1h" in message["text"]
    assert f"K{DIGEST_LINES} 1h" not in message["text"] and "and 5 more" in message["text"]
    [[board]] = message["reply_markup"]["inline_keyboard"]
    assert board["text"] == "Open board"


async def test_a_429_retries_when_told_and_holds_the_chat(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    telegram.script(CHAT, ["429:7"])
    outcome = await channel.channel.send(_message(), TARGET)
    assert (outcome.status, outcome.retry_after) == ("retry", 7.0)
    turn = await channel.pace.turn(CHAT, 5.0)  # what every node's next try now sees
    assert not turn.granted and turn.wait == pytest.approx(7.0, abs=0.05)
    assert (await channel.pace.turn(CHAT + 1, 5.0)).granted  # other chats carry on
    channel.clock.now += 7
    assert await channel.channel.send(_message(), TARGET) == Outcome("sent")


async def test_a_403_blocks_the_channel_and_marks_the_chat_unreachable(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    telegram.script(CHAT, ["403"])
    assert await channel.channel.send(_message(), TARGET) == Outcome(
        "blocked", "the bot was blocked in Telegram")
    assert await chats.is_unreachable(CHAT)


async def test_a_400_fails_and_5xx_or_a_timeout_retry(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    telegram.script(CHAT, ["400"])
    failed = await channel.channel.send(_message(), TARGET)
    assert failed.status == "failed" and "chat not found" in failed.error
    for answer in ("500", "502", "timeout"):
        telegram.script(CHAT, [answer])
        channel.clock.now += 2  # the chat's next turn
        outcome = await channel.channel.send(_message(), TARGET)
        assert (outcome.status, outcome.retry_after) == ("retry", None), answer
    assert telegram.sent(CHAT) == []


async def test_a_turn_far_away_is_later_then_and_a_near_one_is_waited_for(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    assert await channel.channel.send(_message(), TARGET) == Outcome("sent")
    assert await channel.channel.send(_message(), TARGET) == Outcome("sent")
    assert channel.slept == [pytest.approx(CHAT_GAP, abs=0.04)]  # the gap, to its slot
    await channel.pace.hold(CHAT, 30)
    later = await channel.channel.send(_message(), TARGET)
    assert later.status == "later" and later.retry_after == pytest.approx(30, abs=0.05)
    assert len(telegram.sent(CHAT)) == 2


async def test_without_a_running_bot_it_is_tried_again_soon(db: TortoiseContext) -> None:
    channel = TelegramChannel(BotService(), MemoryPace())
    outcome = await channel.send(_message(), TARGET)
    assert (outcome.status, outcome.retry_after) == ("later", NO_BOT_RETRY)


async def test_through_the_delivery_worker_a_403_blocks_the_row_the_board_lists(
        db: TortoiseContext, telegram: TelegramStandin, channel: Channel) -> None:
    await subscriptions.started(CHAT)
    rule = await storage.create_rule(CHAT, {"keys": [list(EURUSD)],
                                            "condition": {"kind": "label"}}, limit=10)
    evaluator = Evaluator()
    evaluator.add(rule)
    fired = [t for i, label in enumerate(("NEUTRAL", "BUY", "SELL"))
             for t in evaluator.evaluate([(EURUSD, {"rec.all": label},
                                           int(T0 * 1000) + i * 60_000)])]
    await storage.write_triggers(fired[:1], term=1, now=T0)
    worker = Deliverer({"telegram": channel.channel}, clock=lambda: T0)
    assert await worker.drain() == 1
    [message] = telegram.sent(CHAT)
    assert "EURUSD 1h: NEUTRAL → BUY" in message["text"]
    telegram.script(CHAT, ["403"])
    channel.clock.now += 2
    await storage.write_triggers(fired[1:], term=1, now=T0)
    await worker.drain()
    [row] = await storage.channels_of(CHAT)
    assert (row["state"], row["reason"]) == ("blocked", "the bot was blocked in Telegram")
    assert (await AlertDelivery.filter(status="failed").count()) == 1
    await subscriptions.heard_from(CHAT)  # the user writes to the bot again
    assert (await AlertChannel.get(id=row["id"])).state == "active"


class BrokenPace(MemoryPace):
    async def turn(self, chat: int, max_wait: float) -> Any:
        raise ConnectionError("Redis is away")


async def test_a_pace_that_cannot_answer_is_a_retry(
        db: TortoiseContext, telegram: TelegramStandin, service: BotService) -> None:
    channel = TelegramChannel(service, BrokenPace())
    outcome = await channel.send(_message(), TARGET)
    assert outcome.status == "retry" and "Redis is away" in outcome.error
    assert telegram.sent(CHAT) == []


@pytest.mark.parametrize("shared", [True, False], ids=["one-pace", "a-pace-per-node"])
async def test_two_nodes_sharing_the_redis_pace_get_no_429(
        db: TortoiseContext, prefix: str, shared: bool) -> None:
    """Two nodes (each its own bot client and channel) send a burst, 2 messages to each of 40
    chats, to the stand-in enforcing Telegram's limits. The pace, the stand-in's limits and the
    channels' sleeps run on one injected clock, so the result is the schedule's, not the
    machine's: with the Redis pace shared, not one 429; with a pace per node (the control),
    each node keeps 25/s on its own and together they are refused."""
    clock = HandClock(T0)

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    with TelegramStandin.running(limits=True, clock=clock) as telegram:
        nodes, paces = [], []
        for node in range(2):
            service = BotService(base_url=BASE, tokens=TokenAuthority([KEY], 3600))
            service.bot = make_bot(TOKEN, telegram.url)
            pace = RedisPace.from_url(REDIS_URL, prefix if shared else f"{prefix}{node}:",
                                      clock=clock)
            paces.append(pace)
            nodes.append((service, TelegramChannel(service, pace, sleep=sleep)))
        try:
            outcomes = [await nodes[i % 2][1].send(_message(rule=i), Target(
                i, "telegram", str(8000 + i % 40))) for i in range(80)]
        finally:
            for service, _ in nodes:
                assert service.bot is not None
                await service.bot.session.close()
            for pace in paces:
                await pace.close()
        refused = telegram.too_many()
    if shared:
        assert [o.status for o in outcomes] == ["sent"] * 80 and refused == []
        assert clock.now - T0 == pytest.approx(79 * 0.04, abs=0.01)  # 25/s, both nodes
    else:
        assert refused and all(o.retry_after for o in outcomes if o.status == "retry")
