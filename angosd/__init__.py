"""angosd: an OCI Distribution v1.1 registry daemon on Twisted."""

__version__ = "0.1.0"
