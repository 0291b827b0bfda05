from quartsig.domain.ratelimit import TokenBucket


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_burst_then_steady_rate():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert sum(bucket.take() for _ in range(50)) == 20
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(50)) == 5


def test_tokens_never_exceed_the_burst():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3
