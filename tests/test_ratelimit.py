from quartsig.domain.ratelimit import TokenBucket
from tests.support.clocks import HandClock


def test_burst_then_steady_rate():
    clock = HandClock(0.0)
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert sum(bucket.take() for _ in range(50)) == 20
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(50)) == 5


def test_tokens_never_exceed_the_burst():
    clock = HandClock(0.0)
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3


def test_grants_whole_tokens_and_a_failure_drains_even_an_empty_bucket():
    """The one bucket behind the early-fetch budget (``grant``) and the bot-secret limiter
    (``drain``, ``wait``): each had a copy of this arithmetic."""
    clock = HandClock(0.0)
    bucket = TokenBucket(rate=0.5, burst=3, clock=clock)
    assert bucket.grant(2) == 2 and bucket.grant(5) == 1 and bucket.grant(1) == 0
    assert bucket.wait() == 2  # one token takes two seconds at 0.5 a second
    clock.now += 1.0
    bucket.drain()  # half a token, spent: back to empty
    assert bucket.level() == 0.0 and bucket.wait() == 2
    clock.now += 2.0
    assert bucket.wait() is None and bucket.available() == 1
