"""Login rate: one client logs in and out through a target as fast as it can, for a while.

Each login is a new libpq connection: TCP, the startup packet, authentication (SCRAM for
direct and PgBouncer; the token for pgguard, which then logs in upstream itself, with SCRAM
too) and the server's greeting. Then the client disconnects. PgBouncer hands the next client
the server connection the last one left; PostgreSQL forks a backend per login; pgguard opens
a new upstream connection per login, and a session log if its log is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from connect import login
from procs import process_cpu_seconds
from report import Ratio
from targets import DIRECT, PGBOUNCER, PGGUARD, PGGUARD_POLICY, PROXIES, TARGET_NAMES, Environment, Target


@dataclass(frozen=True)
class LoginRate:
    target: str
    logins: int
    seconds: float
    cpu_seconds: float | None  # of the proxy; None when direct

    @property
    def per_second(self) -> float:
        return self.logins / self.seconds

    @property
    def cpu_ms_per_login(self) -> float | None:
        return None if self.cpu_seconds is None else self.cpu_seconds * 1e3 / self.logins

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"per_second": self.per_second, "cpu_ms_per_login": self.cpu_ms_per_login}


def measure_logins(target: Target, duration: float) -> LoginRate:
    cpu_before = None if target.pid is None else process_cpu_seconds(target.pid)
    logins = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration:
        login(target).finish()
        logins += 1
    cpu = None if cpu_before is None or target.pid is None else process_cpu_seconds(target.pid) - cpu_before
    return LoginRate(target.name, logins, elapsed, cpu)


def login_rates(env: Environment, duration: float, log: Callable[[str], None] = print) -> dict[str, LoginRate]:
    rates = {}
    for name, target in env.targets.items():
        rates[name] = rate = measure_logins(target, duration)
        cpu = "" if rate.cpu_ms_per_login is None else f", proxy CPU {rate.cpu_ms_per_login:.2f} ms/login"
        log(f"logins {name:<14} {rate.per_second:>8.0f} logins/s{cpu}")
    return rates


LOGIN_RATIOS = (
    Ratio(PGGUARD, DIRECT, "pgguard_vs_direct", "pgguard/direct"),
    Ratio(PGGUARD_POLICY, DIRECT, "pgguard_policy_vs_direct", "pgguard+policy/direct"),
    Ratio(PGGUARD, PGBOUNCER, "pgguard_vs_pgbouncer", "pgguard/pgbouncer"),
)
LOGIN_COLUMNS = ("client", *(f"{name} logins/s" for name in TARGET_NAMES), *(ratio.label for ratio in LOGIN_RATIOS),
                 *(f"{name} CPU ms/login" for name in PROXIES))


def login_ratio(rates: dict[str, LoginRate], ratio: Ratio) -> float:
    return rates[ratio.numerator].per_second / rates[ratio.denominator].per_second


def login_table_rows(rates: dict[str, LoginRate]) -> list[list[str]]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return [["1, sequential", *(f"{rates[name].per_second:.0f}" for name in TARGET_NAMES),
             *(f"{login_ratio(rates, ratio):.2f}×" for ratio in LOGIN_RATIOS),
             *(ms(rates[name].cpu_ms_per_login) for name in PROXIES)]]
