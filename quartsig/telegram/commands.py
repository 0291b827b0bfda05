"""What the bot answers: ``/start``, ``/board``, ``/stop``, ``/help``, as :class:`Reply` values.

The handlers read and write accounts but never talk to Telegram: the worker sends what they
return, so every answer is testable without a network and the sending policy (429, 403) lives
in one place. Text is HTML (Telegram's HTML parse mode needs only ``<>&`` escaped); anything that
came from the user goes through :func:`html.escape`.

Sign-up (``QUARTSIG_SIGNUP``): ``open`` creates an account on ``/start``; ``invite`` creates it
when ``/start`` carries an unspent code (the ``t.me/<bot>?start=<code>`` deep link); ``closed``
tells an unknown user their Telegram id, to give the operator. A disabled account gets one polite
line and never a link, whatever the mode.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from quartsig.access import accounts, chats, invites
from quartsig.access.tokens import TokenAuthority, board_link

#: (command, description) as ``setMyCommands`` shows them in Telegram's menu.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", "Open your signal board"),
    ("board", "Get a fresh board link"),
    ("stop", "Turn off alerts"),
    ("help", "What this bot does"),
)

BUTTON = "Open board"


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    #: An inline URL button (label, url), or None.
    button: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Desk:
    """What the handlers need to know besides the database."""

    tokens: TokenAuthority
    signup: str
    #: Where the board is (``QUARTSIG_BASE_URL`` or where the server listens); None: unknown.
    base_url: str | None


def parse(text: str) -> tuple[str, str]:
    """``("start", "payload")`` for ``/start@bot payload``; ``("", text)`` for plain text."""
    text = text.strip()
    if not text.startswith("/"):
        return "", text
    head, _, rest = text.partition(" ")
    return head[1:].partition("@")[0].lower(), rest.strip()


def _lifetime(seconds: int) -> str:
    hours = seconds / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"


def board(desk: Desk, tg_id: int, greeting: str = "") -> Reply:
    """A fresh token's link behind the button."""
    if desk.base_url is None:
        return Reply("The board's address is not configured yet (QUARTSIG_BASE_URL); "
                     "please tell the operator.")
    link = board_link(desk.base_url, desk.tokens.issue(tg_id).token)
    text = (f"{greeting}Your signal board is ready. The link works for "
            f"<b>{_lifetime(desk.tokens.ttl)}</b>; send /board any time for a fresh one.")
    return Reply(text, (BUTTON, link))


def refused(tg_id: int, signup: str) -> Reply:
    """What an unknown user hears: how to get in, with their id to give the operator."""
    who = f"Your Telegram id is <code>{tg_id}</code>."
    if signup == "invite":
        return Reply(f"This board is invite-only: open the invite link the operator gave you. "
                     f"{who}")
    return Reply(f"This board is private. {who} Send it to the operator to be let in, "
                 f"then send /start again.")


DISABLED = Reply("Your access to this board has been turned off. If you think this is a "
                 "mistake, please contact the operator.")
HELP = Reply("This bot opens your TradingView signal board.\n\n"
             + "\n".join(f"/{name} - {html.escape(text)}" for name, text in COMMANDS))


async def answer(desk: Desk, tg_id: int, text: str, *, name: str = "") -> Reply:
    """The reply to ``text`` from user ``tg_id`` (``name``: their first name, escaped here)."""
    command, argument = parse(text)
    if command == "help":
        return HELP
    account = await accounts.Account.get_or_none(tg_id=tg_id)
    if account is not None and not account.active:
        return DISABLED
    greeting = f"Hello, {html.escape(name)}! " if name else ""
    if command == "start":
        if account is None and not await _sign_up(desk.signup, tg_id, argument):
            return refused(tg_id, desk.signup)
        await chats.set_alerts(tg_id, True)
        return board(desk, tg_id, greeting)
    if account is None:
        return refused(tg_id, desk.signup)
    if command == "board":
        return board(desk, tg_id)
    if command == "stop":
        await chats.set_alerts(tg_id, False)
        return Reply("Alerts are off. Your board still works; send /start to turn alerts "
                     "back on.")
    return Reply("Send /board for a link to your signal board, or /help.")


async def _sign_up(signup: str, tg_id: int, payload: str) -> bool:
    if signup == "open" or (signup == "invite" and await invites.redeem(payload, tg_id)):
        await accounts.add(tg_id)
        return True
    return False
