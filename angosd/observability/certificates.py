"""The expiry of the daemon's TLS certificates as a metric, read from the files at each scrape.

``angosd_tls_certificate_expiry_timestamp_seconds{certificate}``: for ``server``, the
``notAfter`` (epoch seconds) of the first certificate of the server bundle (the leaf); for
``client_ca``, the earliest ``notAfter`` of the client CA bundle. A file that cannot be read
or holds no certificate gives no sample (the alert on a missing series catches it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["METRIC", "CertificateExpiry", "expiry_of"]

METRIC = "angosd_tls_certificate_expiry_timestamp_seconds"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def expiry_of(path: str, earliest: bool) -> float | None:
    """``notAfter`` of the first certificate in PEM file ``path`` (``earliest``: of the one
    expiring first); None when unreadable or empty."""
    try:
        with open(path, "rb") as file:
            pems = _PEM.findall(file.read())
        times = [x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp() for pem in pems]
    except (OSError, ValueError):
        return None
    if not times:
        return None
    return min(times) if earliest else times[0]


class CertificateExpiry(Collector):
    """Collects the expiry of the bundles ``bundles()`` names (``server``, ``client_ca``; None: not configured)."""

    def __init__(self, bundles: Callable[[], Mapping[str, str | None]]) -> None:
        self._bundles = bundles

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(METRIC, "", labels=("certificate",))]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(METRIC, "Expiry (notAfter, epoch seconds) of the daemon's TLS certificates.",
                                   labels=("certificate",))
        for name, path in sorted(self._bundles().items()):
            if path:
                expiry = expiry_of(path, earliest=name != "server")
                if expiry is not None:
                    family.add_metric((name,), expiry)
        yield family
