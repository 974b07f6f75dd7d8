"""Maintenance commands write one audit line per run (a real ``angosd`` process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from angosd.observability.audit import verify_lines
from tests.inmemory import InMemoryDaemon
from tests.integration.ocihelpers import push_image

REPO = Path(__file__).resolve().parents[2]


def angosd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "angosd", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_each_command_run_is_one_line(tmp_path: Path) -> None:
    store, copy = tmp_path / "store", tmp_path / "copy"
    push_image(InMemoryDaemon(root=str(store)), "team/app", "v1")
    audit = tmp_path / "audit.log"
    config = tmp_path / "angosd.toml"
    config.write_text(f'[observability.audit]\npath = "{audit}"\nhash_chain = true\n'
                      '[global.retention_policy]\nrules = ["image.tag == \'v1\'"]\n')
    archive = tmp_path / "app.tar"
    runs = [
        (["export", "-c", str(config), "--root", str(store), "team/app", "-o", str(archive)], 0),
        (["import", "-c", str(config), "--root", str(copy), str(archive)], 0),
        (["prune", "-c", str(config), "--root", str(copy), "--dry-run"], 0),
        (["scrub", "-c", str(config), "--root", str(copy)], 0),
        (["mirror", "-c", str(config), "--root", str(copy), "team/app:v1"], 1),  # not a pull-through repository
        (["migrate", "--from-distribution", str(tmp_path / "none"), "-c", str(config), "--root", str(copy)], 1),
    ]
    for count, (args, status) in enumerate(runs, 1):
        done = angosd(*args)
        assert done.returncode == status, (args, done.stdout, done.stderr)
        lines = audit.read_bytes().splitlines()
        assert len(lines) == count, (args, lines)
        record = json.loads(lines[-1])
        assert (record["via"], record["action"], record["status"]) == ("cli", args[0], status)
        assert record["result"] == ("success" if status == 0 else "failure")
        assert record["identity"]["kind"] == "local" and record["identity"]["id"]
    prune = json.loads(audit.read_bytes().splitlines()[2])
    assert prune["options"]["dry_run"] is True and prune["options"]["root"] == str(copy)
    assert verify_lines(audit.read_bytes().splitlines()).problem is None
    verified = angosd("audit", "verify", str(audit))
    assert verified.returncode == 0 and "6 lines, chain intact" in verified.stdout
