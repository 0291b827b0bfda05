"""The token contract: what any bot with the key can mint, and every way a token is refused."""

from __future__ import annotations

import base64
import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from quartsig.access.tokens import (
    MAX_TG_ID,
    MAX_TOKEN_LENGTH,
    BadSignature,
    ExpiredToken,
    FutureToken,
    InvalidTelegramId,
    InvalidToken,
    MalformedToken,
    TokenAuthority,
    check_tg_id,
    load_or_create_keys,
)
from quartsig.config import ConfigError, Settings
from tests.support.clocks import HandClock

NOW = 1_750_000_000
TTL = 3600
KEY = Fernet.generate_key().decode()
OTHER_KEY = Fernet.generate_key().decode()




@pytest.fixture
def clock() -> HandClock:
    return HandClock(NOW)


@pytest.fixture
def authority(clock: HandClock) -> TokenAuthority:
    return TokenAuthority([KEY], TTL, clock=clock)


def test_plaintext_is_the_decimal_id_and_nothing_else(authority: TokenAuthority) -> None:
    issued = authority.issue(42)
    assert Fernet(KEY.encode()).decrypt(issued.token) == b"42"
    assert Fernet(KEY.encode()).extract_timestamp(issued.token) == NOW
    assert issued.expires_at == datetime.fromtimestamp(NOW + TTL, UTC)


def test_a_token_minted_by_plain_fernet_verifies(authority: TokenAuthority) -> None:
    token = Fernet(KEY.encode()).encrypt_at_time(b"123456789", NOW - 10)
    assert authority.verify(token.decode()) == 123456789
    assert authority.verify(token) == 123456789


def test_round_trip_of_the_largest_id(authority: TokenAuthority) -> None:
    assert authority.verify(authority.issue(MAX_TG_ID).token) == MAX_TG_ID


def test_rotation_first_key_encrypts_all_keys_decrypt(clock: HandClock) -> None:
    old = TokenAuthority([OTHER_KEY], TTL, clock=clock)
    rotated = TokenAuthority([KEY, OTHER_KEY], TTL, clock=clock)
    assert rotated.verify(old.issue(7).token) == 7
    fresh = rotated.issue(8).token
    assert Fernet(KEY.encode()).decrypt(fresh) == b"8"
    with pytest.raises(InvalidToken):
        old.verify(fresh)


def test_wrong_key_is_a_bad_signature(clock: HandClock) -> None:
    token = TokenAuthority([OTHER_KEY], TTL, clock=clock).issue(42).token
    with pytest.raises(BadSignature):
        TokenAuthority([KEY], TTL, clock=clock).verify(token)


def test_tampering_with_any_byte_is_a_bad_signature(authority: TokenAuthority) -> None:
    raw = bytearray(base64.urlsafe_b64decode(authority.issue(42).token))
    # timestamp (high byte: far future; low byte: a second off), IV, ciphertext, HMAC
    for position in (1, 8, 9, 30, len(raw) - 1):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        with pytest.raises(InvalidToken) as refused:
            authority.verify(base64.urlsafe_b64encode(bytes(tampered)).decode())
        assert type(refused.value) is InvalidToken, position


def test_expiry_is_fernets_timestamp_against_the_ttl(
    authority: TokenAuthority, clock: HandClock
) -> None:
    token = authority.issue(42).token
    clock.now = NOW + TTL
    assert authority.verify(token) == 42
    clock.now = NOW + TTL + 1
    with pytest.raises(ExpiredToken):
        authority.verify(token)


def test_an_expired_token_under_a_wrong_key_is_a_bad_signature(clock: HandClock) -> None:
    token = TokenAuthority([OTHER_KEY], TTL, clock=clock).issue(42).token
    clock.now = NOW + 10 * TTL
    with pytest.raises(BadSignature) as refused:
        TokenAuthority([KEY], TTL, clock=clock).verify(token)
    assert not isinstance(refused.value, ExpiredToken)


def test_far_future_timestamps_are_refused(authority: TokenAuthority) -> None:
    slightly_ahead = Fernet(KEY.encode()).encrypt_at_time(b"42", NOW + 30)
    assert authority.verify(slightly_ahead) == 42
    far_ahead = Fernet(KEY.encode()).encrypt_at_time(b"42", NOW + 86400 * 365)
    with pytest.raises(FutureToken):
        authority.verify(far_ahead)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        "gAAAAA",
        "gAAAAABé" + "A" * 100,
        "g" * (MAX_TOKEN_LENGTH + 1),
        "A" * 100_000,
        "gAAAAAB=" * 20,
        base64.urlsafe_b64encode(b"\x81" + b"\x00" * 88).decode(),  # wrong version byte
        base64.urlsafe_b64encode(b"\x80" + b"\x00" * 89).decode(),  # ciphertext not whole blocks
    ],
    ids=["empty", "spaces", "stub", "non-ascii", "just-too-long", "huge", "padding", "version",
         "blocks"],
)
def test_malformed_tokens_are_refused_before_crypto(
    authority: TokenAuthority, token: str
) -> None:
    with pytest.raises(MalformedToken):
        authority.verify(token)


@pytest.mark.parametrize("drop", [1, 2, 3, 4, 20, 50, 99])
def test_truncated_tokens_are_refused(authority: TokenAuthority, drop: int) -> None:
    token = authority.issue(42).token
    assert token.endswith("==")
    with pytest.raises(MalformedToken):
        authority.verify(token[:-drop])


def test_non_string_input_is_malformed(authority: TokenAuthority) -> None:
    with pytest.raises(MalformedToken):
        authority.verify(None)  # type: ignore[arg-type]
    with pytest.raises(MalformedToken):
        authority.verify(b"\xff\xfe")


@pytest.mark.parametrize(
    "plaintext", [b"", b"042", b"-5", b"+5", b"4 2", b"42\n", b"x", b"9223372036854775808",
                  b"99999999999999999999"]
)
def test_a_signed_token_must_carry_a_canonical_decimal_id(
    authority: TokenAuthority, plaintext: bytes
) -> None:
    token = Fernet(KEY.encode()).encrypt_at_time(plaintext, NOW)
    with pytest.raises(MalformedToken):
        authority.verify(token)


@pytest.mark.parametrize("value", [0, -1, MAX_TG_ID + 1, True, 4.0, "42", None])
def test_ids_outside_the_contract_are_refused(authority: TokenAuthority, value: object) -> None:
    with pytest.raises(InvalidTelegramId):
        check_tg_id(value)
    with pytest.raises(InvalidTelegramId):
        authority.issue(value)  # type: ignore[arg-type]


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data", **changes)


def test_configured_keys_are_used_in_order(tmp_path: Path) -> None:
    assert load_or_create_keys(_settings(tmp_path, secret_keys=(KEY, OTHER_KEY))) == [
        KEY,
        OTHER_KEY,
    ]
    assert not (tmp_path / "data").exists()


def test_a_bad_configured_key_names_the_variable_but_not_the_key(tmp_path: Path) -> None:
    secret = "hunter2-not-a-fernet-key"
    with pytest.raises(ConfigError) as error:
        load_or_create_keys(_settings(tmp_path, secret_keys=(KEY, secret)))
    assert str(error.value).startswith("QUARTSIG_SECRET_KEYS: entry 2")
    assert secret not in str(error.value)


def test_a_key_is_generated_once_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    with caplog.at_level(logging.WARNING, logger="quartsig.access.tokens"):
        first = load_or_create_keys(settings)
    key_file = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "QUARTSIG_SECRET_KEYS" in caplog.text
    assert first[0] not in caplog.text
    caplog.clear()
    assert load_or_create_keys(settings) == first
    assert not caplog.records
    Fernet(first[0].encode())  # a real key


def test_a_corrupt_key_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret.key").write_text("garbage\n")
    with pytest.raises(ConfigError, match="QUARTSIG_SECRET_KEYS"):
        load_or_create_keys(_settings(tmp_path))


def test_the_data_directory_is_created_private(tmp_path: Path) -> None:
    """Issue 14: the key file's directory is ``0700`` whatever the umask leaves."""
    settings = Settings.from_env({}, data_dir=tmp_path / "nested" / "data")
    load_or_create_keys(settings)
    assert stat.S_IMODE((tmp_path / "nested" / "data").stat().st_mode) == 0o700


async def test_the_sqlite_directory_is_created_private(tmp_path: Path) -> None:
    from quartsig.access import database

    settings = Settings.from_env({}, data_dir=tmp_path / "data",
                                 database_url=f"sqlite://{tmp_path / 'db' / 'q.sqlite3'}")
    async with database.open_database(settings):
        pass
    assert stat.S_IMODE((tmp_path / "db").stat().st_mode) == 0o700
