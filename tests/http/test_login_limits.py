"""Failed password checks are limited per source address and per username (429 with
Retry-After, counted in /metrics); a password verified recently still passes."""

from __future__ import annotations

import base64

from angosd.auth.basic import hash_password
from tests.inmemory import InMemoryDaemon

CONFIG = """
[global.access_policy]
default = "deny"
rules = ["identity.username == 'ci'"]

[auth.identity.ci]
username = "ci"
password = "{ci}"

[auth.login_limits]
failures_per_address = {per_address}
failures_per_username = {per_username}
window_secs = 30
"""


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def daemon(per_address: int, per_username: int) -> InMemoryDaemon:
    return InMemoryDaemon(CONFIG.format(ci=hash_password("right"), per_address=per_address,
                                        per_username=per_username))


def limited_count(registry: InMemoryDaemon) -> float:
    text = registry.request("GET", "/metrics", headers=basic("ci", "right")).body.decode()
    line = next(line for line in text.splitlines()
                if line.startswith('angosd_auth_attempts_total{method="basic",result="limited"}'))
    return float(line.split()[-1])


def test_failures_per_address_then_429_until_the_window_ends() -> None:
    registry = daemon(per_address=3, per_username=100)
    assert registry.request("GET", "/v2/", headers=basic("ci", "right")).status == 200  # verified: cached
    for attempt in range(3):
        assert registry.request("GET", "/v2/", headers=basic(f"user{attempt}", "wrong")).status == 401
    refused = registry.request("GET", "/v2/", headers=basic("someone", "wrong"))
    assert refused.status == 429
    assert refused.error_codes == ["TOOMANYREQUESTS"]
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    # The right password, verified a moment ago, still passes from the same address.
    assert registry.request("GET", "/v2/", headers=basic("ci", "right")).status == 200
    assert limited_count(registry) == 1
    registry.reactor.advance(31)
    assert registry.request("GET", "/v2/", headers=basic("someone", "wrong")).status == 401


def test_failures_per_username() -> None:
    registry = daemon(per_address=0, per_username=2)
    for _ in range(2):
        assert registry.request("GET", "/v2/", headers=basic("ci", "wrong")).status == 401
    assert registry.request("GET", "/v2/", headers=basic("ci", "wrong")).status == 429
    # Not yet verified: the right password is refused too while the username is limited.
    assert registry.request("GET", "/v2/", headers=basic("ci", "right")).status == 429
    # Other usernames are not affected.
    assert registry.request("GET", "/v2/", headers=basic("other", "wrong")).status == 401
    registry.reactor.advance(31)
    assert registry.request("GET", "/v2/", headers=basic("ci", "right")).status == 200


def test_zero_means_no_limit() -> None:
    registry = daemon(per_address=0, per_username=0)
    for _ in range(12):
        assert registry.request("GET", "/v2/", headers=basic("ci", "wrong")).status == 401
