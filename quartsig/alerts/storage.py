"""Alerts in the database: rules, triggers, their deliveries (an outbox), channels, the fence.

The database row is the truth about an alert. A trigger and the deliveries that will carry it
are written in one transaction (the transactional outbox), so a crash leaves both or neither,
and a delivery worker on any node finds what is owed by reading ``alert_delivery``.

Exactly once. Every trigger carries a dedupe key (rule, rule version, key, transition, bar
time: :attr:`Trigger.dedupe`) under a UNIQUE constraint: a retry of the same publication, or
the next leader evaluating the same change, writes nothing new. Every write also carries the
publication's fencing term and first raises the single ``alert_fence`` row to it with
``UPDATE ... SET term = :term WHERE term <= :term``: a paused ex-leader whose term is lower
changes no row there and its whole transaction writes nothing (:class:`Fenced`), as the Redis
publish script refuses it. On PostgreSQL the UPDATE also locks the row until commit, so writers
take turns and the dedupe check that follows sees every trigger committed before it; on SQLite
writers take turns anyway.

A writer frozen while it holds that lock would stall every other writer until it wakes. On
PostgreSQL each fenced transaction first sets ``lock_timeout`` (a waiter gives up after
:data:`LOCK_TIMEOUT` and is retried) and ``idle_in_transaction_session_timeout`` (the server
ends the session of a transaction idle that long, which releases the row: the frozen writer's
transaction is rolled back, and when it wakes its next statement fails; its retry carries the
old term and is fenced). Both are ``SET LOCAL``: they end with the transaction. SQLite has no
server to end a session: a waiter gets ``database is locked`` after the driver's 5 s busy
timeout and is retried, until the frozen process wakes (and is fenced) or dies (the kernel
drops its file lock).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from quartsig.access.accounts import Account, DisabledAccount, UnknownAccount
from quartsig.alerts.evaluation import PAUSED, Trigger
from quartsig.alerts.rules import Rule, RuleError, rule_from_spec
from quartsig.domain.model import Key
from quartsig.domain.rules import number

FENCE_ID = 1
#: Seconds (PostgreSQL) a fenced write waits for the fence row's lock before it gives up (and
#: the recorder tries again), and a fenced transaction may sit idle before the server ends
#: its session: a leader frozen mid-write (SIGSTOP, a long pause) then holds the fence row
#: this long at most instead of until it wakes.
LOCK_TIMEOUT = 5.0
CHANNEL_KINDS_BUILTIN = ("webhook", "telegram")


class AlertRule(Model):
    id = fields.BigIntField(primary_key=True)
    owner = fields.BigIntField(db_index=True)  # the account's Telegram id
    spec: Any = fields.JSONField()  # Rule.spec()
    version = fields.IntField(default=1)
    muted = fields.BooleanField(default=False)
    spent = fields.BooleanField(default=False)  # an "only once" rule that fired
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "alert_rule"


class AlertTrigger(Model):
    id = fields.BigIntField(primary_key=True)
    dedupe = fields.CharField(64, unique=True)
    rule_id = fields.BigIntField(db_index=True)  # no foreign key: history outlives a rule
    rule_version = fields.IntField()
    owner = fields.BigIntField(db_index=True)
    profile = fields.CharField(64)
    symbol = fields.CharField(128)
    tf = fields.CharField(8)
    before = fields.CharField(32)
    after = fields.CharField(32)
    value = fields.FloatField(null=True)  # a crossing's number (a label change: ``after``)
    bar = fields.BigIntField()  # the bar's open, Unix ms
    ts = fields.BigIntField()  # the data's time, Unix ms
    term = fields.BigIntField()  # the fencing term it was written under
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "alert_trigger"


class AlertChannel(Model):
    """Where one account's alerts go: a webhook endpoint, a Telegram chat, a plugin's kind."""

    id = fields.BigIntField(primary_key=True)
    owner = fields.BigIntField(db_index=True)
    kind = fields.CharField(32)
    target = fields.CharField(512)  # a URL, a chat id
    secret = fields.CharField(128, null=True)  # a webhook's whsec_ secret
    state = fields.CharField(16, default="active")  # active | disabled | blocked
    reason = fields.CharField(255, default="")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "alert_channel"


class AlertDelivery(Model):
    """One trigger owed to one channel: the outbox row a delivery worker sends and marks."""

    id = fields.BigIntField(primary_key=True)
    trigger: fields.ForeignKeyRelation[AlertTrigger] = fields.ForeignKeyField(
        "quartsig.AlertTrigger", related_name="deliveries", on_delete=fields.CASCADE)
    channel: fields.ForeignKeyRelation[AlertChannel] = fields.ForeignKeyField(
        "quartsig.AlertChannel", related_name="deliveries", on_delete=fields.CASCADE)
    status = fields.CharField(16, default="pending", db_index=True)  # pending | sent | failed
    attempts = fields.IntField(default=0)
    due = fields.BigIntField(db_index=True)  # Unix ms: not before
    error = fields.CharField(255, default="")
    sent_at = fields.BigIntField(null=True)  # Unix ms

    class Meta:
        table = "alert_delivery"
        unique_together = (("trigger", "channel"),)


class AlertFence(Model):
    """One row: the highest fencing term any trigger was written under."""

    id = fields.IntField(primary_key=True, generated=False)
    term = fields.BigIntField(default=0)

    class Meta:
        table = "alert_fence"


class AlertSeen(Model):
    """The last values of a rule's key that a leader evaluated, written in the same
    transaction as that publication's triggers: the next leader starts from them, so a change
    published by a leader that died before writing its triggers is still seen as a change."""

    key = fields.CharField(255, primary_key=True)  # profile, symbol, tf joined by \x1f
    data: Any = fields.JSONField()  # only the outputs the key's rules read
    ts = fields.BigIntField()

    class Meta:
        table = "alert_seen"


class Fenced(RuntimeError):
    """A write carried a term lower than one already written: a newer leader exists."""


class RuleLimit(RuleError):
    """The account already has as many rules as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__("rule", f"an account may have at most {limit} alert rules")


class UnknownRule(LookupError):
    def __init__(self, rule_id: int) -> None:
        super().__init__(f"alert rule {rule_id} does not exist")
        self.rule_id = rule_id


@dataclass(frozen=True, slots=True)
class Written:
    """What one fenced write did."""

    triggers: list[int]  # ids of the triggers written (duplicates and stale rules left out)
    deliveries: int


# -- rules ------------------------------------------------------------------------------------


def to_rule(row: AlertRule) -> Rule:
    return rule_from_spec(row.spec, id=row.id, owner=row.owner, version=row.version,
                          muted=row.muted)


async def create_rule(owner: int, spec: object, *, limit: int) -> Rule:
    """Store a new rule for an active account; :class:`RuleError` for bad input,
    :class:`RuleLimit` past ``limit``, the account errors of :mod:`quartsig.access.accounts`."""
    rule = rule_from_spec(spec, owner=owner)  # refuse bad input before touching the database
    async with in_transaction() as connection:
        # Locking the account row makes two concurrent creates count one after the other.
        account = await Account.filter(tg_id=owner).using_db(connection).select_for_update(
        ).first()
        if account is None:
            raise UnknownAccount(owner)
        if not account.active:
            raise DisabledAccount(owner)
        if await AlertRule.filter(owner=owner).using_db(connection).count() >= limit:
            raise RuleLimit(limit)
        row = await AlertRule.create(owner=owner, spec=rule.spec(), using_db=connection)
    return to_rule(row)


async def update_rule(owner: int, rule_id: int, *, spec: object = None,
                      muted: bool | None = None) -> Rule:
    """Change a rule's definition (a new version: it re-arms) or its mute."""
    row = await AlertRule.get_or_none(id=rule_id, owner=owner)
    if row is None:
        raise UnknownRule(rule_id)
    if spec is not None:
        row.spec = rule_from_spec(spec, owner=owner).spec()
        row.version += 1
        row.spent = False
    if muted is not None:
        row.muted = muted
    await row.save()
    return to_rule(row)


async def delete_rule(owner: int, rule_id: int) -> None:
    if not await AlertRule.filter(id=rule_id, owner=owner).delete():
        raise UnknownRule(rule_id)


async def rules_of(owner: int) -> list[Rule]:
    return [to_rule(row) for row in await AlertRule.filter(owner=owner).order_by("id")]


async def live_rules() -> list[Rule]:
    """Every rule the evaluator should watch: all but spent ones (muted ones fire nothing)."""
    return [to_rule(row) for row in await AlertRule.filter(spent=False).order_by("id")]


async def rules_stamp() -> tuple[int, Any]:
    """(number of rules, latest change): it changes whenever a rule is created, edited, muted
    or deleted anywhere, so a node reloads its rules only when they changed."""
    count = await AlertRule.all().count()
    latest = await AlertRule.all().order_by("-updated_at").first().values_list(
        "updated_at", flat=True)
    return count, latest


# -- channels ---------------------------------------------------------------------------------


async def add_channel(owner: int, kind: str, target: str, *, secret: str | None = None) -> int:
    row = await AlertChannel.create(owner=owner, kind=kind, target=target, secret=secret)
    return int(row.id)


async def channels_of(owner: int) -> list[dict[str, Any]]:
    """The account's channels, secrets left out (shown once, when made)."""
    return list(await AlertChannel.filter(owner=owner).order_by("id").values(
        "id", "kind", "target", "state", "reason"))


async def delete_channel(owner: int, channel_id: int) -> bool:
    return bool(await AlertChannel.filter(id=channel_id, owner=owner).delete())


async def set_channel_state(channel_id: int, state: str, reason: str = "") -> None:
    await AlertChannel.filter(id=channel_id).update(state=state, reason=reason[:255])


async def open_channel(owner: int, kind: str, target: str, *, reactivate: bool = True) -> int:
    """The account's channel of ``kind`` to ``target``, made if missing and (``reactivate``)
    active again if it was stopped or blocked: a channel the user turns on themselves
    (Telegram's ``/start``). Two nodes making it at once keep the older row, so a chat never
    gets an alert twice through two rows."""
    rows = AlertChannel.filter(owner=owner, kind=kind, target=target)
    row = await rows.order_by("id").first()
    if row is None:
        await add_channel(owner, kind, target)
        ids = [int(r["id"]) for r in await rows.order_by("id").values("id")]
        if len(ids) > 1:
            await AlertChannel.filter(id__in=ids[1:]).delete()
        return ids[0]
    if reactivate and row.state != "active":
        await set_channel_state(int(row.id), "active")
    return int(row.id)


async def owners_with(kind: str) -> set[int]:
    """The accounts that have a channel of ``kind``, whatever its state."""
    return {int(row["owner"]) for row in await AlertChannel.filter(kind=kind).values("owner")}


async def set_channels_state(owner: int, kind: str, state: str, reason: str = "", *,
                             only: Sequence[str] | None = None) -> int:
    """Move the account's channels of ``kind`` (those in a state of ``only``, if given) to
    ``state``; how many moved."""
    rows = AlertChannel.filter(owner=owner, kind=kind)
    if only is not None:
        rows = rows.filter(state__in=list(only))
    return int(await rows.update(state=state, reason=reason[:255]))


# -- the fenced outbox write -------------------------------------------------------------------


async def ensure_fence() -> None:
    """Create the fence row if it is missing (start-up; safe to race)."""
    with contextlib.suppress(IntegrityError):  # another node created it first
        await AlertFence.get_or_create(id=FENCE_ID, defaults={"term": 0})


async def fence_term() -> int:
    row = await AlertFence.get_or_none(id=FENCE_ID)
    return 0 if row is None else int(row.term)


def _seen_key(key: Key) -> str:
    return "\x1f".join(key)


async def seen_values() -> dict[Key, tuple[dict[str, Any], int]]:
    """What the last leader evaluated, per key (see :class:`AlertSeen`)."""
    return {Key(*row["key"].split("\x1f")): (row["data"], int(row["ts"]))
            for row in await AlertSeen.all().values("key", "data", "ts")}


async def write_triggers(triggers: Sequence[Trigger], term: int, *,
                         seen: Mapping[Key, tuple[dict[str, Any], int]] | None = None,
                         now: float | None = None) -> Written:
    """Write ``triggers`` and their deliveries in one transaction fenced by ``term``.

    ``seen``: the values of the rules' keys the batch carried (:class:`AlertSeen`), written
    in the same transaction. Raises :class:`Fenced` (and writes nothing) when a higher term
    has written. Triggers
    already written (same dedupe key) and triggers of a rule deleted, muted or edited since
    it was evaluated are left out; each new trigger gets one pending delivery per active
    channel of its owner."""
    due = int((time.time() if now is None else now) * 1000)
    async with in_transaction() as connection:
        await bound_waits(connection)
        raised = await AlertFence.filter(id=FENCE_ID, term__lte=term).using_db(
            connection).update(term=term)
        if not raised:
            if await AlertFence.filter(id=FENCE_ID).using_db(connection).exists():
                raise Fenced(f"term {term} is below the fence's")
            await AlertFence.create(id=FENCE_ID, term=term, using_db=connection)
        if seen:
            await AlertSeen.bulk_create(
                [AlertSeen(key=_seen_key(key), data=data, ts=ts)
                 for key, (data, ts) in seen.items()],
                on_conflict=["key"], update_fields=["data", "ts"], using_db=connection)
        if not triggers:
            return Written([], 0)
        live = {
            (row["id"], row["version"])
            for row in await AlertRule.filter(
                id__in={t.rule.id for t in triggers}, muted=False, spent=False,
            ).using_db(connection).values("id", "version")
        }
        fresh = {t.dedupe: t for t in triggers if (t.rule.id, t.rule.version) in live}
        if fresh:
            written = await AlertTrigger.filter(dedupe__in=list(fresh)).using_db(
                connection).values_list("dedupe", flat=True)
            for dedupe in written:
                del fresh[str(dedupe)]
        if not fresh:
            return Written([], 0)
        await AlertTrigger.bulk_create(_trigger_rows(fresh.values(), term), using_db=connection)
        rows = await AlertTrigger.filter(dedupe__in=list(fresh)).using_db(connection).order_by(
            "id").values("id", "owner")
        channels: dict[int, list[int]] = {}
        for channel in await AlertChannel.filter(
                owner__in={row["owner"] for row in rows}, state="active").using_db(
                connection).values("id", "owner"):
            channels.setdefault(channel["owner"], []).append(channel["id"])
        deliveries = [AlertDelivery(trigger_id=row["id"], channel_id=channel_id, due=due)
                      for row in rows for channel_id in channels.get(row["owner"], ())]
        if deliveries:
            await AlertDelivery.bulk_create(deliveries, using_db=connection)
        once = {t.rule.id for t in fresh.values() if t.rule.frequency == "only_once"}
        if once:
            await AlertRule.filter(id__in=once).using_db(connection).update(spent=True)
        paused = {t.rule.id for t in fresh.values() if t.after == PAUSED}
        if paused:  # fired too often: muted until its user unmutes it
            await AlertRule.filter(id__in=paused).using_db(connection).update(muted=True)
    return Written(sorted(row["id"] for row in rows), len(deliveries))


async def bound_waits(connection: Any, seconds: float | None = None) -> None:
    """On PostgreSQL, bound how long this transaction waits for a lock and how long it may
    sit idle holding one (see the module's docstring); nothing elsewhere."""
    if connection.capabilities.dialect != "postgres":
        return
    ms = max(1, int((LOCK_TIMEOUT if seconds is None else seconds) * 1000))
    await connection.execute_script(f"SET LOCAL lock_timeout = {ms}; "
                                    f"SET LOCAL idle_in_transaction_session_timeout = {ms}")


def _trigger_rows(triggers: Iterable[Trigger], term: int) -> list[AlertTrigger]:
    return [
        AlertTrigger(
            dedupe=t.dedupe, rule_id=t.rule.id, rule_version=t.rule.version,
            owner=t.rule.owner, profile=t.key.profile, symbol=t.key.symbol, tf=t.key.tf,
            before=t.before[:32], after=t.after[:32], value=number(t.value), bar=t.bar,
            ts=t.ts,
            term=term,
        )
        for t in triggers
    ]


async def history(owner: int, *, limit: int = 100) -> list[dict[str, Any]]:
    """The account's latest triggers, newest first, each with its deliveries' outcome."""
    triggers = await AlertTrigger.filter(owner=owner).order_by("-id").limit(limit).values()
    by_id = {row["id"]: {**row, "deliveries": []} for row in triggers}
    for delivery in await AlertDelivery.filter(trigger_id__in=list(by_id)).values(
            "trigger_id", "channel_id", "status", "attempts", "error", "sent_at"):
        by_id[delivery.pop("trigger_id")]["deliveries"].append(delivery)
    return list(by_id.values())


# -- the delivery worker's side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owed:
    """One claimed delivery with what sending it needs."""

    id: int
    attempts: int
    trigger: dict[str, Any]
    channel: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Due:
    """A pending delivery that is due: which channel row and kind (digests group by it)."""

    id: int
    channel: int
    kind: str
    due: int


_DUE_FIELDS = ("id", "channel_id", "channel__kind", "due")


def _due_rows(rows: Iterable[Mapping[str, Any]]) -> list[Due]:
    return [Due(int(row["id"]), int(row["channel_id"]), str(row["channel__kind"]),
                int(row["due"])) for row in rows]


def _pending(kinds: Collection[str] | None) -> dict[str, Any]:
    """The filter of pending rows a worker can send: of its channels' ``kinds`` (None: any).
    A node without a kind's channel (``quartsig collect`` has no bot) must not claim its rows,
    or it would hold them for a lease and send nothing."""
    found: dict[str, Any] = {"status": "pending"}
    if kinds is not None:
        found["channel__kind__in"] = list(kinds)
    return found


async def due_deliveries(now: int, *, limit: int = 100,
                         kinds: Collection[str] | None = None) -> list[Due]:
    """Pending deliveries due at ``now`` (Unix ms), oldest first."""
    return _due_rows(await AlertDelivery.filter(**_pending(kinds), due__lte=now).order_by(
        "due", "id").limit(limit).values(*_DUE_FIELDS))


async def due_of_triggers(triggers: Iterable[int], now: int, *,
                          kinds: Collection[str] | None = None) -> list[Due]:
    """The due pending deliveries of these triggers (announced on the stream)."""
    return _due_rows(await AlertDelivery.filter(
        **_pending(kinds), trigger_id__in=list(triggers), due__lte=now).order_by(
        "due", "id").values(*_DUE_FIELDS))


async def due_on_channels(channels: Iterable[int], now: int, *, limit: int = 100) -> list[Due]:
    """The due pending deliveries of these channel rows (a digest takes them all)."""
    return _due_rows(await AlertDelivery.filter(
        channel_id__in=list(channels), status="pending", due__lte=now).order_by(
        "due", "id").limit(limit).values(*_DUE_FIELDS))


async def next_due(*, kinds: Collection[str] | None = None) -> int | None:
    """When the next pending delivery of ``kinds`` is due (Unix ms), if any."""
    row = await AlertDelivery.filter(**_pending(kinds)).order_by("due").first().values("due")
    return None if row is None else int(row["due"])


async def claim(delivery_id: int, now: int, lease: int) -> Owed | None:
    """Take a due delivery for ``lease`` ms: its ``due`` moves past the lease in one
    conditional UPDATE, so of several workers (nodes) one wins, and if the winner dies the
    delivery is due again when the lease ends. ``None`` if another worker has it."""
    taken = await AlertDelivery.filter(id=delivery_id, status="pending", due__lte=now).update(
        due=now + lease)
    if not taken:
        return None
    delivery = await AlertDelivery.get(id=delivery_id)
    trigger = await AlertTrigger.filter(id=delivery.trigger_id).first().values()  # type: ignore[attr-defined]
    channel = await AlertChannel.filter(id=delivery.channel_id).first().values()  # type: ignore[attr-defined]
    if trigger is None or channel is None:
        return None
    return Owed(delivery_id, delivery.attempts, trigger, channel)


async def mark(delivery_id: int, *, status: str, attempts: int, due: int | None = None,
               error: str = "", sent_at: int | None = None) -> None:
    changes: dict[str, Any] = {"status": status, "attempts": attempts, "error": error[:255]}
    if due is not None:
        changes["due"] = due
    if sent_at is not None:
        changes["sent_at"] = sent_at
    await AlertDelivery.filter(id=delivery_id).update(**changes)
