"""What a feature needs is imported only when it is configured: a daemon without LDAP, S3 or
tracing never loads their libraries (each worker would carry them, unshared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.daemon import REPO

#: Libraries of optional features, and the feature each belongs to.
OPTIONAL = {"ldaptor": "[auth.ldap]", "botocore": "[blob_store.s3]", "boto3": "[blob_store.s3]",
            "opentelemetry": "[observability.tracing]"}

_BUILD = """
import json, sys
from twisted.internet import reactor
from angosd.config import default_config
from angosd.daemon.overrides import Overrides
from angosd.daemon.service import build_service
build_service(Overrides(root=sys.argv[1], workers=1).apply(default_config()), reactor,
              listen="tcp:0:interface=127.0.0.1")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_a_default_daemon_loads_no_optional_feature_library(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "angosd" in loaded and "twisted" in loaded
    assert {name: feature for name, feature in OPTIONAL.items() if name in loaded} == {}
