"""A full thread pool: requests beyond it get 429 TOOMANYREQUESTS with Retry-After, then service resumes."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from angosd.auth.basic import hash_password
from tests.daemon import Daemon, Response

PASSWORD = "ci-pass-Ov4"
#: One argon2 check at a time and one waiting: a burst of distinct wrong passwords overflows it.
CONFIG = """
[server]
cpu_threads = 1
cpu_queue = 1

[auth.identity.ci]
username = "ci"
password = "{hash}"

# This test is about the pool's bound, not about the login limits (which would refuse first).
[auth.login_limits]
failures_per_address = 0
failures_per_username = 0
"""
BURST = 12


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_burst_beyond_the_cpu_pool_gets_429_with_retry_after_then_service_resumes(tmp_path: Path) -> None:
    config = tmp_path / "angosd.toml"
    config.write_text(CONFIG.format(hash=hash_password(PASSWORD)))
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),), workers=1).start()
    try:
        together = threading.Barrier(BURST)

        def attempt(index: int) -> Response:
            together.wait()
            return daemon.request("GET", "/v2/", headers=basic("ci", f"wrong-{index}"))  # never cached: all hash

        with ThreadPoolExecutor(BURST) as clients:
            responses = list(clients.map(attempt, range(BURST)))
        statuses = Counter(response.status for response in responses)
        assert set(statuses) <= {401, 429}, statuses
        assert statuses[401] >= 1 and statuses[429] >= 1, statuses
        for refused in (response for response in responses if response.status == 429):
            assert refused.error_codes == ["TOOMANYREQUESTS"]
            assert refused.headers["retry-after"] == "1"
        assert daemon.request("GET", "/v2/", headers=basic("ci", PASSWORD)).status == 200
        metrics = daemon.request("GET", "/metrics", headers=basic("ci", PASSWORD)).body.decode()
        assert 'angosd_http_requests_total{action="get-api-version",method="GET",status="429"}' in metrics
    finally:
        daemon.stop()
