"""Whether tracing is on, and how it samples: decided without importing OpenTelemetry.

`angosd.observability.tracing` (which imports the SDK) is imported only when
`tracing_enabled` says so, so a daemon without ``[observability.tracing]`` pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from angosd.config import TracingConfig

__all__ = ["ENDPOINT_VARIABLES", "sampling_ratio", "traces_url", "tracing_enabled"]

#: Standard variables naming an OTLP collector; either turns tracing on.
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_enabled(config: TracingConfig, environ: Mapping[str, str]) -> bool:
    """True when ``endpoint`` is configured or a standard endpoint variable is set, unless
    ``OTEL_SDK_DISABLED`` is ``true``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return config.endpoint is not None or any(environ.get(name) for name in ENDPOINT_VARIABLES)


def traces_url(config: TracingConfig) -> str | None:
    """The configured collector URL traces are POSTed to: ``/v1/traces`` is added to an
    endpoint without a path. None: the exporter reads the ``OTEL_*`` variables."""
    if config.endpoint is None:
        return None
    parts = urlsplit(config.endpoint)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/traces")
    return urlunsplit(parts)


def sampling_ratio(config: TracingConfig, environ: Mapping[str, str]) -> float:
    """The ratio of new traces recorded: ``sampling_rate``, else a valid
    ``OTEL_TRACES_SAMPLER_ARG``, else 1."""
    if config.sampling_rate is not None:
        return config.sampling_rate
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        return 1.0
    return ratio if 0.0 <= ratio <= 1.0 else 1.0
