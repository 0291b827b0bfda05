import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartsig.domain import protocol
from quartsig.domain.protocol import (
    Auth,
    Close,
    ErrorCode,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
)
from quartsig.domain.symbols import SCREENERS

VOCABULARY = protocol.Vocabulary(
    profiles=frozenset({"full", "summary"}), screeners=SCREENERS, default_exchange="FX_IDC"
)


def parse(frame: str) -> list[protocol.Message]:
    return [protocol.parse_message(raw, VOCABULARY) for raw in protocol.decode(frame)]


def test_subscribe_is_normalised_and_profile_defaults_to_full():
    [message] = parse('{"op": "subscribe", "symbol": " usdjpy ", "tf": "1m", "id": 7}')
    assert message == Subscribe("FX_IDC:USDJPY", "1m", "full", 7)


def test_an_array_frame_holds_several_messages_in_order():
    frame = (
        '[{"op":"ping","id":"a"},{"op":"unsubscribe","symbol":"BINANCE:btcusdt",'
        '"tf":"1M","profile":"summary"},{"op":"auth","token":"t"}]'
    )
    assert parse(frame) == [
        Ping("a"),
        Unsubscribe("BINANCE:BTCUSDT", "1M", "summary"),
        Auth("t"),
    ]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", ErrorCode.BAD_JSON),
        ("[]", ErrorCode.BAD_OP),
        ("42", ErrorCode.BAD_OP),
        ('"subscribe"', ErrorCode.BAD_OP),
        ('{"op": "dance"}', ErrorCode.BAD_OP),
        ('{"op": null}', ErrorCode.BAD_OP),
        ('{"op": "ping", "id": true}', ErrorCode.BAD_OP),
        ('{"op": "ping", "id": 9007199254740992}', ErrorCode.BAD_OP),
        ('{"op": "ping", "id": {"x": 1}}', ErrorCode.BAD_OP),
        ('{"op": "auth", "token": 5}', ErrorCode.BAD_OP),
        ('{"op": "subscribe", "symbol": "", "tf": "1m"}', ErrorCode.BAD_SYMBOL),
        ('{"op": "subscribe", "symbol": 5, "tf": "1m"}', ErrorCode.BAD_SYMBOL),
        ('{"op": "subscribe", "symbol": "NOWHERE:ABC", "tf": "1m"}', ErrorCode.BAD_SYMBOL),
        ('{"op": "subscribe", "symbol": "USDJPY", "tf": "1D"}', ErrorCode.BAD_TIMEFRAME),
        ('{"op": "subscribe", "symbol": "USDJPY", "tf": ["1m"]}', ErrorCode.BAD_TIMEFRAME),
        ('{"op": "subscribe", "symbol": "USDJPY", "tf": "1m", "profile": "x"}',
         ErrorCode.BAD_PROFILE),
        ("[" + ",".join(['{"op":"ping"}'] * 65) + "]", ErrorCode.BAD_OP),
    ],
)
def test_bad_input_gets_its_documented_code(frame, code):
    with pytest.raises(ProtocolError) as caught:
        parse(frame)
    assert caught.value.code == code


def test_error_echoes_the_id_of_the_op_it_answers():
    with pytest.raises(ProtocolError) as caught:
        parse('{"op": "subscribe", "symbol": "USDJPY", "tf": "7m", "id": "x1"}')
    assert caught.value.id == "x1"
    frame = orjson.loads(protocol.error(caught.value.code, caught.value.message, caught.value.id))
    assert frame == {"type": "error", "code": "bad_timeframe", "message": caught.value.message,
                     "id": "x1"}


def test_join_packs_encoded_pieces_into_one_array_without_reencoding():
    pieces = [protocol.reply("pong", 1), protocol.reply("pong", 2)]
    assert protocol.join(pieces[:1]) is pieces[0]
    assert orjson.loads(protocol.join(pieces)) == [{"type": "pong", "id": 1},
                                                   {"type": "pong", "id": 2}]


def test_close_codes_say_whether_to_retry():
    assert Close.GOING_AWAY.retry and Close.TRY_AGAIN_LATER.retry and Close.AUTH_TIMEOUT.retry
    assert Close.TOO_MANY.retry  # the account's connection cap: in again when one of its closes
    assert not Close.BAD_TOKEN.retry and not Close.FORBIDDEN.retry


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["op", "symbol", "tf", "profile", "id", "token", "x"]),
                      children, max_size=6),
    max_leaves=12,
)


@settings(max_examples=400)
@given(json_values)
def test_parsing_any_json_value_either_succeeds_or_raises_a_documented_error(value):
    try:
        frame = orjson.dumps(value)
    except TypeError:
        return
    try:
        parse(frame.decode())
    except ProtocolError as error:
        caught = error
    else:
        return
    assert caught.code in set(ErrorCode)
    assert caught.message


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data):
    with contextlib.suppress(ProtocolError):
        [protocol.parse_message(raw, VOCABULARY) for raw in protocol.decode(data)]


def test_the_deferred_notice_has_one_shape_whoever_sends_it():
    """It was built twice (the hub's with ``retry_at``, the route's without and in another
    field order); both now come from ``protocol.deferred``."""
    from quartsig.domain.model import Key

    key = Key("full", "FX_IDC:EURUSD", "1h")
    later = orjson.loads(protocol.deferred(key, "waits", 1_700_000_000_000))
    tick = orjson.loads(protocol.deferred(key, "waits"))
    assert later == {"type": "notice", "code": "deferred", "message": "waits",
                     "retry_at": 1_700_000_000_000, "symbol": "FX_IDC:EURUSD", "tf": "1h",
                     "profile": "full"}
    assert tick == {name: value for name, value in later.items() if name != "retry_at"}
