"""What the bot answers: ``/start``, ``/board``, ``/alerts``, ``/stop``, ``/help`` and the
inline buttons (:func:`press`), as :class:`Reply` values.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from quartsig.access import accounts, chats, invites
from quartsig.access.tokens import TokenAuthority, board_link
from quartsig.alerts import storage
from quartsig.alerts.rules import Crossing, Rule
from quartsig.telegram import subscriptions

#: (command, description) as ``setMyCommands`` shows them in Telegram's menu.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("start", "Open your signal board"),
    ("board", "Get a fresh board link"),
    ("alerts", "Your alert rules: mute or delete"),
    ("stop", "Turn off alerts"),
    ("help", "What this bot does"),
)

BUTTON = "Open board"
#: Rules listed by ``/alerts`` with their buttons (Telegram allows 100 buttons a message).
MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class Button:
    """An inline button: opens ``url``, or sends ``callback`` back to the bot."""

    text: str
    url: str | None = None
    callback: str | None = None


Keyboard = tuple[tuple[Button, ...], ...]


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    #: Rows of inline buttons under the message.
    keyboard: Keyboard = ()


@dataclass(frozen=True, slots=True)
class Desk:
    """What the handlers need to know besides the database."""

    tokens: TokenAuthority
    signup: str
    #: Where the board is (``QUARTSIG_BASE_URL`` or where the server listens); None: unknown.
    base_url: str | None
    #: Called after a rule changed here, so this node's recorder reloads at once (the
    #: collecting node, if another, sees it within ``QUARTSIG_ALERTS_RELOAD``).
    rules_changed: Callable[[], None] = field(default=lambda: None)


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


def board_button(desk: Desk, tg_id: int) -> Button | None:
    """"Open board" with a fresh token in the URL's fragment; None without a base URL."""
    if desk.base_url is None:
        return None
    return Button(BUTTON, url=board_link(desk.base_url, desk.tokens.issue(tg_id).token))


def board(desk: Desk, tg_id: int, greeting: str = "") -> Reply:
    """A fresh token's link behind the button."""
    button = board_button(desk, tg_id)
    if button is None:
        return Reply("The board's address is not configured yet (QUARTSIG_BASE_URL); "
                     "please tell the operator.")
    text = (f"{greeting}Your signal board is ready. The link works for "
            f"<b>{_lifetime(desk.tokens.ttl)}</b>; send /board any time for a fresh one.")
    return Reply(text, ((button,),))


def describe(rule: Rule) -> str:
    """A rule in a few plain words (not escaped): ``EURUSD 1h: rec.all to STRONG_BUY``."""
    key = rule.keys[0]
    where = (f"{len(rule.keys)} cards" if rule.watchlist
             else f"{key.symbol.rpartition(':')[2]} {key.tf}")
    condition = rule.condition
    if isinstance(condition, Crossing):
        what = f"{condition.output} {condition.direction} {condition.level:g}"
    else:
        what = f"{condition.output} changes"
        if condition.from_:
            what += f" from {'/'.join(sorted(condition.from_))}"
        if condition.to:
            what += f" to {'/'.join(sorted(condition.to))}"
    text = f"{where}: {what}"
    return f"{rule.name} ({text})" if rule.name else text


def rules_list(desk: Desk, tg_id: int, rules: Sequence[Rule]) -> Reply:
    """``/alerts``: each rule with its mute/unmute and delete buttons."""
    opener = board_button(desk, tg_id)
    tail: Keyboard = ((opener,),) if opener is not None else ()
    if not rules:
        return Reply("You have no alert rules. Make one with the bell on a card of your "
                     "board.", tail)
    lines, rows = ["<b>Your alert rules</b>"], []
    for number, rule in enumerate(rules[:MAX_LISTED], 1):
        muted = " <i>(muted)</i>" if rule.muted else ""
        lines.append(f"{number}. {html.escape(describe(rule))}{muted}")
        toggle = ("Unmute", "unmute") if rule.muted else ("Mute", "mute")
        rows.append((Button(f"{toggle[0]} {number}", callback=f"rule:{rule.id}:{toggle[1]}"),
                     Button(f"Delete {number}", callback=f"rule:{rule.id}:delete")))
    if len(rules) > MAX_LISTED:
        lines.append(f"... and {len(rules) - MAX_LISTED} more on the board.")
    return Reply("\n".join(lines), (*rows, *tail))


@dataclass(frozen=True, slots=True)
class Pressed:
    """What a button press gets: a short notice (plain text, shown by Telegram as a toast)
    and, for a press on the ``/alerts`` list, the list as it is now (the message is edited)."""

    notice: str
    reply: Reply | None = None


#: What each action does to a rule (``None``: delete) and the notice's verb.
ACTIONS: dict[str, tuple[bool | None, str]] = {
    "mute": (True, "Muted"), "unmute": (False, "Unmuted"), "delete": (None, "Deleted")}


def parse_callback(data: str) -> tuple[int, str, bool] | None:
    """``(rule_id, action, from_the_list)`` of ``mute:<id>`` (an alert's "Mute this rule")
    or ``rule:<id>:<action>`` (``/alerts``); None for anything else."""
    parts = data.split(":")
    if len(parts) == 2 and parts[0] == "mute":
        parts = ["rule", parts[1], "mute"]
        listed = False
    else:
        listed = True
    if len(parts) != 3 or parts[0] != "rule" or parts[2] not in ACTIONS:
        return None
    if not parts[1].isdigit() or len(parts[1]) > 18:
        return None
    return int(parts[1]), parts[2], listed


async def press(desk: Desk, tg_id: int, data: str) -> Pressed:
    """The user ``tg_id`` pressed a button carrying ``data``: act on the rule if it is
    theirs (the rule is looked up by owner, so someone else's rule is as unknown as a
    deleted one)."""
    parsed = parse_callback(data)
    if parsed is None:
        return Pressed("This button no longer works; send /alerts.")
    account = await accounts.Account.get_or_none(tg_id=tg_id)
    if account is None or not account.active:
        return Pressed("Your access to this board is off.")
    rule_id, action, listed = parsed
    muted, verb = ACTIONS[action]
    try:
        if muted is None:
            await storage.delete_rule(tg_id, rule_id)
            notice = f"{verb}."
        else:
            rule = await storage.update_rule(tg_id, rule_id, muted=muted)
            notice = f"{verb}: {describe(rule)}"[:190]
    except storage.UnknownRule:
        notice = "That rule is not yours or no longer exists."
    else:
        desk.rules_changed()
    if not listed:
        return Pressed(notice)
    return Pressed(notice, rules_list(desk, tg_id, await storage.rules_of(tg_id)))


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
        await subscriptions.started(tg_id)
        return board(desk, tg_id, greeting)
    if account is None:
        return refused(tg_id, desk.signup)
    if command == "board":
        return board(desk, tg_id)
    if command == "alerts":
        return rules_list(desk, tg_id, await storage.rules_of(tg_id))
    if command == "stop":
        await chats.set_alerts(tg_id, False)
        await subscriptions.stopped(tg_id)
        return Reply("Alerts are off. Your board still works; send /start to turn alerts "
                     "back on.")
    return Reply("Send /board for a link to your signal board, /alerts for your alert "
                 "rules, or /help.")


async def _sign_up(signup: str, tg_id: int, payload: str) -> bool:
    if signup == "open" or (signup == "invite" and await invites.redeem(payload, tg_id)):
        await accounts.add(tg_id)
        return True
    return False
