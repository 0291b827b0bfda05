import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartsig.domain.model import Batch, Key
from quartsig.domain.protocol import ErrorCode
from quartsig.fanout.connection import Connection
from quartsig.fanout.hub import SHAPED_MAX_KEYS, Hub, TooManySubscriptions, diff, shaped_diff

KEY = Key("summary", "FX_IDC:USDJPY", "1m")
OTHER = Key("summary", "FX_IDC:EURUSD", "1m")


async def _noop(text: str) -> None:
    pass


def connection() -> Connection:
    return Connection(_noop)


def frames(conn: Connection) -> list[dict]:
    text = conn.take()
    if text is None:
        return []
    value = orjson.loads(text)
    return value if isinstance(value, list) else [value]


def test_diff_keeps_only_changed_and_new_keys():
    assert diff({"a": 1, "b": None}, {"a": 1, "b": 2, "c": None}) == {"b": 2, "c": None}
    assert diff({"a": 1}, {"a": 1}) == {}


_maps = st.dictionaries(st.sampled_from("abcdef"),
                        st.none() | st.integers(-2, 2) | st.floats() | st.text(max_size=1))


@given(_maps, _maps, st.booleans())
def test_diff_is_the_keys_whose_value_differs_whether_or_not_the_keys_line_up(old, new, align):
    if align:  # the fast path: same keys, same order
        new = {name: new.get(name, value) for name, value in old.items()}
    expected = {name: value for name, value in new.items()
                if name not in old or old[name] != value}
    got = diff(old, new)
    assert list(got) == list(expected)
    assert all(got[name] is expected[name] for name in got)


_names = st.sampled_from(["a", "b", "c", "d'e", "f\\n", "\u00e9", "x" * 40])
_values = st.none() | st.booleans() | st.integers(-2, 2) | st.floats() | st.text(max_size=1)


def _both_ways(names):
    """Two shaped diffs for ``names``: one that builds its result by adding what changed (as
    it starts), one turned to copying and deleting by a call where everything changed."""
    adding, deleting = shaped_diff(names), shaped_diff(names)
    assert deleting(dict.fromkeys(names, 0), dict.fromkeys(names, 1)) == dict.fromkeys(names, 1)
    return adding, deleting


@given(st.lists(_names, min_size=1, unique=True), st.data())
def test_a_shaped_diff_is_exactly_the_diff(names, data):
    """Same dict as :func:`diff`, same key order, the very same value objects, whether the
    data has the shape it was generated for or not (then :func:`diff` answers)."""
    shape = st.fixed_dictionaries({name: _values for name in names})
    other = st.dictionaries(_names, _values)
    old = data.draw(shape | other, label="old")
    new = data.draw(shape | other, label="new")
    expected = diff(old, new)
    for shaped in _both_ways(names):
        got = shaped(old, new)
        assert list(got) == list(expected)
        assert all(got[name] is expected[name] for name in got)
        assert got is not new


@given(st.dictionaries(_names, _values, min_size=1), st.data())
def test_a_shaped_diff_compares_values_not_objects(old, data):
    """Equal values parsed afresh (distinct objects, as every tick's are) are no change."""
    names = list(old)
    new = orjson.loads(orjson.dumps(old, option=orjson.OPT_NON_STR_KEYS))
    moved = data.draw(st.lists(st.sampled_from(names), unique=True), label="moved")
    for name in moved:
        new[name] = data.draw(_values, label=name)
    expected = diff(old, new)
    for shaped in _both_ways(names):
        got = shaped(old, new)
        assert list(got) == list(expected)
        assert all(got[name] is expected[name] for name in got)


def test_a_shaped_diff_is_generated_only_for_str_keys_within_the_bound():
    assert shaped_diff(["a", 1]) is diff  # type: ignore[list-item]
    assert shaped_diff([]) is diff
    assert shaped_diff([f"k{i}" for i in range(SHAPED_MAX_KEYS + 1)]) is diff
    assert shaped_diff(["a", "b"]) is not diff


async def test_a_profile_whose_keys_vary_still_gets_exact_updates():
    """The hub's diff is generated for the shape of a profile's first data; data of another
    shape later (a plugin whose keys vary) is diffed the generic way."""
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    hub.subscribe(conn, OTHER)
    hub.publish(KEY, {"a": 1, "b": 2}, 1)
    hub.publish(OTHER, {"b": 2, "a": 1, "c": 0}, 1)
    frames(conn)
    hub.publish(KEY, {"a": 1, "b": 3}, 2)
    hub.publish(OTHER, {"b": 2, "a": 5, "c": 0}, 2)
    hub.publish(KEY, {"b": 3, "a": 4}, 3)
    assert [(f["symbol"], f["data"]) for f in frames(conn)] == [
        (KEY.symbol, {"b": 3, "a": 4}), (OTHER.symbol, {"a": 5})
    ]


async def test_changes_the_collector_knows_are_sent_only_from_the_data_they_were_taken_from():
    """A batch's changes are trusted only when the hub holds the very data they were taken
    from; against anything else (another node's value, a resync) the hub diffs itself."""
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    first = {"Recommend.All": 0.2, "rec.all": "BUY"}
    hub.apply(Batch(values=[(KEY, first, 1)]))
    frames(conn)
    # Trusted: the entry holds ``first`` itself, so the hub does not look at the values.
    hub.apply(Batch(values=[(KEY, {"Recommend.All": 0.6, "rec.all": "BUY"}, 2)],
                    changes={KEY: (first, {"Recommend.All": 0.6, "marker": True})}))
    [update] = frames(conn)
    assert update["data"] == {"Recommend.All": 0.6, "marker": True}
    # Not trusted: an equal dict is not the data the hub holds.
    held = hub.entries[KEY].data
    assert held is not None
    hub.apply(Batch(values=[(KEY, {"Recommend.All": -0.6, "rec.all": "SELL"}, 3)],
                    changes={KEY: (dict(held), {"marker": True})}))
    [update] = frames(conn)
    assert update["data"] == {"Recommend.All": -0.6, "rec.all": "SELL"}


async def test_first_data_is_a_snapshot_then_only_changes():
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    assert hub.subscribe(conn, KEY)
    assert hub.demand() == {KEY} and hub.fresh == {KEY}
    hub.publish(KEY, {"Recommend.All": 0.2, "rec.all": "BUY"}, 1000)
    assert frames(conn) == [{"type": "snapshot", "symbol": "FX_IDC:USDJPY", "tf": "1m",
                             "profile": "summary",
                             "data": {"Recommend.All": 0.2, "rec.all": "BUY"}, "ts": 1000}]
    assert not hub.fresh
    assert not hub.publish(KEY, {"Recommend.All": 0.2, "rec.all": "BUY"}, 2000)
    assert frames(conn) == []
    assert hub.publish(KEY, {"Recommend.All": 0.6, "rec.all": "BUY"}, 3000)
    [update] = frames(conn)
    assert update["type"] == "update" and update["data"] == {"Recommend.All": 0.6}


async def test_subscribers_share_the_same_encoded_text():
    hub = Hub()
    a, b = connection(), connection()
    for conn in (a, b):
        hub.attach(conn, 1)
        hub.subscribe(conn, KEY)
    hub.publish(KEY, {"x": 1}, 1)
    hub.publish(KEY, {"x": 2}, 2)
    pa, pb = a._pending[KEY], b._pending[KEY]
    # both pending pieces were merged identically (snapshot + update -> snapshot)
    assert pa.encoded(KEY) == pb.encoded(KEY)
    a.take(), b.take()
    hub.publish(KEY, {"x": 3}, 3)
    assert a._pending[KEY] is b._pending[KEY]  # one piece object, one encoding, for all


async def test_late_subscriber_gets_cached_snapshot_at_once():
    hub = Hub()
    early, late = connection(), connection()
    hub.attach(early, 1)
    hub.subscribe(early, KEY)
    hub.publish(KEY, {"x": 1}, 1)
    hub.attach(late, 2)
    hub.subscribe(late, KEY)
    [snapshot] = frames(late)
    assert snapshot["type"] == "snapshot" and snapshot["data"] == {"x": 1}
    assert not hub.fresh  # no early fetch for a cached key


async def test_subscribing_twice_is_harmless():
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    hub.publish(KEY, {"x": 1}, 1)
    frames(conn)
    assert not hub.subscribe(conn, KEY)
    assert frames(conn) == []


async def test_unsubscribe_and_detach_remove_demand_but_keep_the_cache_for_a_while():
    now = [0.0]
    hub = Hub(retain=10, clock=lambda: now[0])
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    hub.subscribe(conn, OTHER)
    hub.publish(KEY, {"x": 1}, 1)
    assert hub.unsubscribe(conn, KEY)
    assert KEY not in conn._pending  # nothing for it after "unsubscribed"
    hub.detach(conn)
    assert hub.demand() == set()
    assert OTHER not in hub.entries  # never had data: nothing to keep
    assert KEY in hub.entries
    now[0] = 11
    assert hub.sweep() == 1 and not hub.entries


async def test_applying_updates_in_order_to_the_snapshot_gives_the_current_state():
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    states = [{"a": 1, "b": 2}, {"a": 1, "b": 3}, {"a": None, "b": 3}, {"a": 5, "b": 0}]
    client: dict = {}
    for ts, state in enumerate(states):
        hub.publish(KEY, dict(state), ts)
        for frame in frames(conn):
            if frame["type"] == "snapshot":
                client = dict(frame["data"])
            else:
                client.update(frame["data"])
        assert client == state


async def test_a_slow_connection_is_conflated_to_the_current_state():
    hub = Hub()
    slow = connection()
    hub.attach(slow, 1)
    hub.subscribe(slow, KEY)
    hub.publish(KEY, {"a": 1, "b": 1}, 1)
    frames(slow)
    for ts, b in enumerate(range(2, 50)):
        hub.publish(KEY, {"a": ts % 3, "b": b}, ts)
    [update] = frames(slow)
    state = {"a": 1, "b": 1} | update["data"]
    assert state == hub.entries[KEY].data
    assert slow.conflated > 0


async def test_limit_on_subscriptions():
    hub = Hub(max_subscriptions=1)
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    with pytest.raises(TooManySubscriptions):
        hub.subscribe(conn, OTHER)


async def test_reject_drops_the_key_and_tells_each_subscriber():
    hub = Hub()
    conn = connection()
    hub.attach(conn, 1)
    hub.subscribe(conn, KEY)
    hub.reject(KEY, ErrorCode.UNKNOWN_SYMBOL, "no such symbol")
    [error] = frames(conn)
    assert error["code"] == "unknown_symbol" and error["symbol"] == KEY.symbol
    assert hub.demand() == set() and hub.subscriptions[conn] == set()


async def test_status_changes_reach_everyone_once_and_new_connections_on_attach():
    hub = Hub()
    a = connection()
    hub.attach(a, 1)
    assert hub.set_status("down", "429")
    assert not hub.set_status("down", "429")
    assert frames(a) == [{"type": "status", "upstream": "down", "reason": "429"}]
    b = connection()
    hub.attach(b, 2)
    assert frames(b)[0]["upstream"] == "down"
    hub.set_status("ok")
    assert frames(a) == [{"type": "status", "upstream": "ok", "reason": ""}]


async def test_a_new_key_raises_fresh_added_once_and_a_second_subscriber_does_not():
    hub = Hub()
    a, b = connection(), connection()
    hub.attach(a, 1)
    hub.attach(b, 2)
    hub.subscribe(a, KEY)
    assert hub.fresh == {KEY} and hub.fresh_added.is_set()
    hub.fresh_added.clear()
    hub.subscribe(b, KEY)
    assert not hub.fresh_added.is_set()
