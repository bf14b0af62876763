"""Failed logins per client address over a sliding window."""

from __future__ import annotations

import pytest

from pgguard.relay.throttle import LoginThrottle, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_door_closes_at_the_limit_and_opens_as_failures_age() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60, clock)
    assert [throttle.failed("10.0.0.1") for _ in range(2)] == [False, False]
    assert throttle.retry_after("10.0.0.1") is None
    clock.now += 10
    assert throttle.failed("10.0.0.1") is True  # the third: the door closes, once
    assert throttle.retry_after("10.0.0.1") == pytest.approx(50)
    assert throttle.failed("10.0.0.1") is False  # in flight as it closed: counted, not announced
    assert throttle.retry_after("10.0.0.2") is None  # others are not affected
    clock.now += 51  # the first failure left the window; two are still in it
    assert throttle.retry_after("10.0.0.1") is None
    assert throttle.failed("10.0.0.1") is True  # one more closes it again, until the next one ages
    assert throttle.retry_after("10.0.0.1") == pytest.approx(9)


def test_a_zero_limit_turns_it_off() -> None:
    throttle = LoginThrottle(0, 60)
    assert not any(throttle.failed("10.0.0.1") for _ in range(100))
    assert throttle.retry_after("10.0.0.1") is None


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("[local]", "[local]"),
])
def test_ipv6_hosts_count_per_64(host: str, key: str) -> None:
    assert address_key(host) == key


def test_forgotten_addresses_do_not_pile_up() -> None:
    clock = Clock()
    throttle = LoginThrottle(5, 60, clock)
    for n in range(10_000):
        throttle.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        clock.now += 0.1  # 1,000 s in all: at most 600 addresses are in the window at any time
    assert len(throttle._failures) <= 2 * 4096
