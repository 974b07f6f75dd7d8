"""Whether the S3 store can be used here: it signs its requests with botocore, an optional dependency.

botocore comes with the ``s3`` extra (``pip install 'angosd[s3]'``); a filesystem store
does not need it. Nothing here imports botocore unless asked.
"""

from __future__ import annotations

import importlib

from angosd.config import ConfigError

__all__ = ["S3_EXTRA", "missing_s3_support", "require_s3_support"]

#: What to run to get the S3 store's dependency.
S3_EXTRA = "pip install 'angosd[s3]'"
#: botocore and the modules of it `angosd.storage.s3_client` imports.
_MODULES = ("botocore", "botocore.auth", "botocore.awsrequest", "botocore.credentials")


def missing_s3_support() -> str | None:
    """None when botocore imports; otherwise why the S3 store cannot run, naming the extra to install."""
    try:
        for name in _MODULES:
            importlib.import_module(name)
    except ImportError:
        return f"botocore is not installed (the S3 store signs requests with it): {S3_EXTRA}"
    return None


def require_s3_support() -> None:
    """Raise `ConfigError` (one line, naming the extra) when botocore cannot be imported."""
    problem = missing_s3_support()
    if problem is not None:
        raise ConfigError(f"[blob_store.s3]: {problem}")
