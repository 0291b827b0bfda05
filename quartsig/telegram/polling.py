"""``quartsig bot poll``: long polling for a machine Telegram cannot reach (no public URL).

Telegram answers 409 to a second poller and refuses ``getUpdates`` while a webhook is set, so
polling runs once per bot or not at all: the poller first claims ``bot:poller`` (in Redis when
``QUARTSIG_REDIS_URL`` is set, so in a cluster only the claim's holder polls) and renews it
while it runs; a second one is refused with one line, as is polling while a webhook is set.
Updates go through the same dedupe and worker as the webhook's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram.exceptions import TelegramConflictError

from quartsig.state import State
from quartsig.telegram.client import BotError
from quartsig.telegram.service import BotService

log = logging.getLogger(__name__)

LEASE = "bot:poller"
#: Seconds the poller's claim lasts unless renewed (renewed every third of it).
LEASE_TTL = 30.0
#: Seconds one ``getUpdates`` long poll waits on Telegram's side.
POLL_TIMEOUT = 25
#: 409 answers in a row after which polling stops (one could be our own earlier poll).
CONFLICTS = 3


async def poll(service: BotService, stop: asyncio.Event) -> None:
    """Claim the poller's lease, then feed ``getUpdates`` to the worker until ``stop``."""
    assert service.claims is not None and service.bot is not None
    claims, bot, node = service.claims, service.bot, service.node
    if not await claims.claim(LEASE, node, LEASE_TTL):
        holder = await claims.holder(LEASE)
        raise BotError(f"another `quartsig bot poll` holds the bot ({holder}); "
                       "only one may poll")
    try:
        info = await bot.get_webhook_info()
        if info.url:
            raise BotError("a webhook is set for this bot; run `quartsig bot webhook delete` "
                           "first (Telegram gives updates to one or the other)")
        renewing = asyncio.create_task(_renew(service, stop))
        try:
            await _loop(service, stop)
        finally:
            renewing.cancel()
    finally:
        await claims.release(LEASE, node)


async def _renew(service: BotService, stop: asyncio.Event) -> None:
    assert service.claims is not None
    while not stop.is_set():
        await asyncio.sleep(LEASE_TTL / 3)
        if not await service.claims.renew(LEASE, service.node, LEASE_TTL):
            log.error("bot: lost the poller's lease; stopping")
            stop.set()


async def _loop(service: BotService, stop: asyncio.Event) -> None:
    assert service.bot is not None
    offset: int | None = None
    conflicts = 0
    while not stop.is_set():
        fetch = asyncio.ensure_future(service.bot.get_updates(
            offset=offset, timeout=POLL_TIMEOUT, request_timeout=POLL_TIMEOUT + 10))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            return
        try:
            updates = fetch.result()
        except TelegramConflictError:
            # Our own long poll cut short (a timeout, a restart) is still open at Telegram's
            # for a while and conflicts too: give up only when it goes on.
            conflicts += 1
            if conflicts >= CONFLICTS:
                raise BotError("Telegram answered 409: another poller (or a webhook) takes "
                               "this bot's updates") from None
            await asyncio.sleep(5)
            continue
        except Exception as error:
            log.warning("bot: getUpdates failed (%s); trying again", error)
            await asyncio.sleep(5)
            continue
        conflicts = 0
        for update in updates:
            offset = update.update_id + 1
            await service.accept(update)


async def run(state: State, service: BotService, stop: asyncio.Event) -> None:
    """Live ``state``'s components (database, bot) while polling, until ``stop`` or a refusal."""
    lifespan = state.lifespan()
    await anext(lifespan)
    try:
        await poll(service, stop)
    finally:
        with contextlib.suppress(StopAsyncIteration):
            await anext(lifespan)
