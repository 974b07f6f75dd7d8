"""Metrics read from files at each scrape: the expiry of the daemon's TLS certificates and
the size of the store's filesystem.

``angosd_tls_certificate_expiry_timestamp_seconds{certificate}``: for ``server``, the
``notAfter`` (epoch seconds) of the first certificate of the server bundle (the leaf); for
``client_ca``, the earliest ``notAfter`` of the client CA bundle. A file that cannot be read
or holds no certificate gives no sample (the alert on a missing series catches it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["FAMILIES", "METRIC", "CertificateExpiry", "FilesystemUsage", "expiry_of"]

METRIC = "angosd_tls_certificate_expiry_timestamp_seconds"
_SIZE = "angosd_storage_filesystem_size_bytes"
_AVAIL = "angosd_storage_filesystem_avail_bytes"
#: (name, labels, help) of the gauges collected here.
FAMILIES = (
    (METRIC, ("certificate",), "Expiry (notAfter, epoch seconds) of the server certificate and the client CA bundle."),
    (_SIZE, (), "Size of the store's filesystem (fs store)."),
    (_AVAIL, (), "Space of the store's filesystem available to the daemon (fs store)."),
)
_HELP = {name: text for name, _labels, text in FAMILIES}
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def expiry_of(path: str, earliest: bool) -> float | None:
    """``notAfter`` of the first certificate in PEM file ``path`` (``earliest``: of the one
    expiring first); None when unreadable or empty."""
    from cryptography import x509  # only a daemon with TLS files has any to read

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
        family = GaugeMetricFamily(METRIC, _HELP[METRIC], labels=("certificate",))
        for name, path in sorted(self._bundles().items()):
            if path:
                expiry = expiry_of(path, earliest=name != "server")
                if expiry is not None:
                    family.add_metric((name,), expiry)
        yield family


class FilesystemUsage(Collector):
    """``angosd_storage_filesystem_size_bytes`` and ``angosd_storage_filesystem_avail_bytes`` of
    the filesystem holding ``root()`` (no sample while it cannot be read)."""

    def __init__(self, root: Callable[[], str]) -> None:
        self._root = root

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(_SIZE, ""), GaugeMetricFamily(_AVAIL, "")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = GaugeMetricFamily(_SIZE, _HELP[_SIZE])
        avail = GaugeMetricFamily(_AVAIL, _HELP[_AVAIL])
        try:
            status = os.statvfs(self._root())
        except OSError:
            pass
        else:
            size.add_metric((), status.f_blocks * status.f_frsize)
            avail.add_metric((), status.f_bavail * status.f_frsize)
        yield size
        yield avail
