"""Standard Webhooks signing, and what an HTTP answer means for a delivery."""

from __future__ import annotations

import base64

import pytest

from quartsig.alerts.channels import Outcome
from quartsig.alerts.webhooks import SignatureError, headers, new_secret, outcome, sign, verify
from tests.support.webhooks import expected_signature

# The example of the Standard Webhooks specification's reference libraries.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specification_example_signs_as_published() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    assert expected_signature(SPEC_SECRET, SPEC_ID, str(SPEC_TS), SPEC_BODY) == SPEC_SIGNATURE


def test_a_new_secret_has_24_random_bytes() -> None:
    one, two = new_secret(), new_secret()
    assert one.startswith("whsec_") and one != two
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 24


def test_verify_accepts_a_genuine_request_and_a_rotated_list() -> None:
    secret = new_secret()
    signed = headers(secret, "msg_1", 1_000, b"{}")
    assert verify(secret, signed, b"{}", now=1_100) == "msg_1"
    rotated = {**signed, "webhook-signature": "v1,bm9wZQ== " + signed["webhook-signature"]}
    assert verify(secret, rotated, b"{}", now=1_100) == "msg_1"


@pytest.mark.parametrize(("change", "now"), [
    ({"webhook-signature": "v1,AAAA"}, 1_000),
    ({"webhook-id": "msg_2"}, 1_000),
    ({}, 1_000 + 301),  # stale
    ({}, 1_000 - 301),  # from the future
    ({"webhook-timestamp": "soon"}, 1_000),
])
def test_verify_refuses_forged_or_stale_requests(change: dict[str, str], now: int) -> None:
    secret = new_secret()
    signed = {**headers(secret, "msg_1", 1_000, b"{}"), **change}
    with pytest.raises(SignatureError):
        verify(secret, signed, b"{}", now=now)
    with pytest.raises(SignatureError):  # another secret
        verify(new_secret(), headers(secret, "msg_1", 1_000, b"{}"), b"{}", now=1_000)


@pytest.mark.parametrize(("status", "after", "expected"), [
    (200, None, Outcome("sent")),
    (204, None, Outcome("sent")),
    (410, None, Outcome("gone", "410 Gone: the endpoint was removed")),
    (429, "120", Outcome("retry", "HTTP 429", 120.0)),
    (503, "soon", Outcome("retry", "HTTP 503", None)),
    (502, "99999999", Outcome("retry", "HTTP 502", 86_400.0)),
    (500, None, Outcome("retry", "HTTP 500")),
    (400, None, Outcome("failed", "HTTP 400")),
    (401, None, Outcome("failed", "HTTP 401")),
])
def test_answers_become_outcomes(status: int, after: str | None, expected: Outcome) -> None:
    assert outcome(status, after) == expected
