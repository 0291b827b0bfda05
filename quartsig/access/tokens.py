"""Fernet tokens: the public contract between the Telegram bot and the board.

A token is a Fernet token whose plaintext is the Telegram id in decimal ASCII
and nothing else, and whose expiry is Fernet's own timestamp checked against
``QUARTSIG_TOKEN_TTL``. Keeping the payload that bare is deliberate: a bot in
any language with a Fernet library and the shared key can mint tokens without
talking to us, and there is no format to version.

Verification is cheap-checks-first: length, alphabet and framing are checked
before any cryptography runs, so garbage from the network costs nothing and
never reaches a code path that could raise something untyped.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet
from cryptography.fernet import InvalidToken as FernetInvalidToken

from quartsig.config import PREFIX, ConfigError, Settings, make_private_dir

log = logging.getLogger(__name__)

MAX_TG_ID = 2**63 - 1
"""Largest id a signed 64-bit column (our ``BIGINT`` primary key) can hold."""

MAX_TOKEN_LENGTH = 512
"""A real token for a 19-digit id is 120 characters; anything far longer is hostile."""

CLOCK_SKEW = 60
"""Seconds a token's timestamp may lie in the future (Fernet's own allowance)."""

KEY_FILE = "secret.key"

_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_DECIMAL_ID = re.compile(rb"[1-9][0-9]{0,18}")
# version byte + timestamp + IV + one AES block + HMAC
_MIN_TOKEN_BYTES = 1 + 8 + 16 + 16 + 32


class TokenError(Exception):
    """A token was refused; subclasses say why, the message is safe to show a user."""


class MalformedToken(TokenError):
    """Not a Fernet token at all (empty, too long, wrong alphabet, truncated framing)."""


class InvalidToken(TokenError):
    """A well-formed token that none of our keys signed, or one that was tampered with."""


BadSignature = InvalidToken


class FutureToken(InvalidToken):
    """Signed by us but stamped in the future beyond clock skew: a minter's clock is wrong."""


class ExpiredToken(TokenError):
    """Signed by us but older than the TTL."""


class InvalidTelegramId(ValueError):
    """An id outside what a token can carry and the accounts table can store."""


def check_tg_id(value: object) -> int:
    """Return ``value`` if it is a usable Telegram id, else raise :class:`InvalidTelegramId`.

    The token contract and the ``BIGINT`` column share this one rule, so an id
    accepted anywhere is accepted everywhere.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTelegramId("Telegram id must be an integer")
    if not 0 < value <= MAX_TG_ID:
        raise InvalidTelegramId(f"Telegram id must be between 1 and {MAX_TG_ID}")
    return value


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token grants: an account, until ``expires_at`` (epoch seconds, the
    authority's clock)."""

    tg_id: int
    expires_at: float


def _check_shape(token: object) -> str:
    """Refuse anything that cannot be a Fernet token before any crypto touches it."""
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedToken("token is not ASCII") from None
    if not isinstance(token, str):
        raise MalformedToken("token must be a string")
    if not token:
        raise MalformedToken("token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise MalformedToken("token is too long")
    if not token.isascii() or not _TOKEN_ALPHABET.fullmatch(token):
        raise MalformedToken("token contains characters outside url-safe base64")
    try:
        raw = base64.urlsafe_b64decode(token)
    except (binascii.Error, ValueError):
        raise MalformedToken("token is not valid base64") from None
    if base64.urlsafe_b64encode(raw).decode("ascii") != token:
        raise MalformedToken("token is not canonical base64 (truncated or re-padded)")
    if len(raw) < _MIN_TOKEN_BYTES or raw[0] != 0x80 or (len(raw) - 57) % 16:
        raise MalformedToken("token is truncated or not a Fernet token")
    return token


def _parse_plaintext(plaintext: bytes) -> int:
    if not _DECIMAL_ID.fullmatch(plaintext):
        raise MalformedToken("token payload is not a decimal Telegram id")
    try:
        return check_tg_id(int(plaintext))
    except InvalidTelegramId:
        raise MalformedToken("token payload is out of range") from None


def _fernet(key: str) -> Fernet:
    return Fernet(key.encode("ascii"))


class TokenAuthority:
    """Mints and verifies tokens with a rotating key list (first encrypts, all decrypt)."""

    def __init__(
        self, keys: Sequence[str], ttl: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not keys:
            raise ValueError("at least one Fernet key is needed")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._fernet = MultiFernet([_fernet(key) for key in keys])
        self.ttl = ttl
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        return cls(load_or_create_keys(settings), settings.token_ttl)

    def issue(self, tg_id: int) -> IssuedToken:
        now = int(self._clock())
        token = self._fernet.encrypt_at_time(str(check_tg_id(tg_id)).encode("ascii"), now)
        return IssuedToken(
            token=token.decode("ascii"),
            expires_at=datetime.fromtimestamp(now + self.ttl, UTC),
        )

    def now(self) -> float:
        """The authority's clock (epoch seconds), against which :attr:`Grant.expires_at` runs."""
        return self._clock()

    def verify(self, token: str | bytes) -> int:
        """Return the Telegram id in ``token`` or raise a :class:`TokenError` subclass."""
        return self.check(token).tg_id

    def check(self, token: str | bytes) -> Grant:
        """The Telegram id in ``token`` and when the token expires (Fernet's timestamp plus
        the TTL), or a :class:`TokenError` subclass."""
        token = _check_shape(token)
        now = int(self._clock())
        try:
            plaintext = self._fernet.decrypt_at_time(token, self.ttl, now)
        except FernetInvalidToken:
            raise self._why_refused(token, now) from None
        # Authenticated by the decryption above, so the stamp can be read from the bytes.
        stamp = int.from_bytes(base64.urlsafe_b64decode(token)[1:9], "big")
        return Grant(_parse_plaintext(plaintext), float(stamp + self.ttl))

    def _why_refused(self, token: str, now: int) -> TokenError:
        """Fernet says only "invalid"; tell a bad signature from a stale or future stamp."""
        try:
            stamp = self._fernet.extract_timestamp(token)
        except FernetInvalidToken:
            return InvalidToken("token was not signed by a current key or was altered")
        if stamp > now + CLOCK_SKEW:
            return FutureToken("token is stamped in the future")
        if stamp + self.ttl < now:
            return ExpiredToken("token has expired")
        # Signed, in its window, yet undecryptable: only a key holder could make this.
        return InvalidToken("token could not be decrypted")


def board_link(base_url: str, token: str) -> str:
    """The link a user opens: the token rides in the fragment, which browsers never send."""
    return f"{base_url.rstrip('/')}/#token={token}"


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def _valid_key(key: str) -> bool:
    try:
        _fernet(key)
    except (ValueError, TypeError, UnicodeEncodeError):
        return False
    return True


def load_or_create_keys(settings: Settings) -> list[str]:
    """The configured keys, or one generated once into the data dir.

    A generated key keeps a fresh checkout working with nothing to set up, but
    a bot cannot mint tokens until it is given that key, hence the warning.
    Neither the key nor a bad key's text is ever logged or echoed.
    """
    name = f"{PREFIX}SECRET_KEYS"
    if settings.secret_keys:
        for position, key in enumerate(settings.secret_keys, start=1):
            if not _valid_key(key):
                raise ConfigError(
                    f"{name}: entry {position} is not a Fernet key (32 url-safe "
                    "base64-encoded bytes); make one with `quartsig keygen`"
                )
        return list(settings.secret_keys)
    path = Path(settings.data_dir) / KEY_FILE
    found = _read_key_file(path)
    key = _create_key_file(path) if found is None else found
    if not _valid_key(key):
        raise ConfigError(f"{name}: unset, and {path} does not hold a valid Fernet key")
    return [key]


def _read_key_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{PREFIX}SECRET_KEYS: unset, and {path} cannot be read ({error.__class__.__name__})"
        ) from None


def _create_key_file(path: Path) -> str:
    key = generate_key()
    try:
        make_private_dir(path.parent)
        # O_EXCL: if two processes race on first start, the loser reads the winner's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = _read_key_file(path)
        if existing is None:
            raise ConfigError(f"{PREFIX}SECRET_KEYS: {path} vanished while reading") from None
        return existing
    except OSError as error:
        raise ConfigError(
            f"{PREFIX}SECRET_KEYS: unset, and no key file can be created at {path} ({error})"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(key + "\n")
    log.warning(
        "%sSECRET_KEYS is not set: generated a new Fernet key into %s. Tokens minted "
        "elsewhere (e.g. by the bot) must use this key; set %sSECRET_KEYS in production.",
        PREFIX,
        path,
        PREFIX,
    )
    return key
