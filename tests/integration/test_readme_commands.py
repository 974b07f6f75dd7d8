"""The README's "Push and pull" commands, as written, against the shipped configuration.

The literal blocks of README.rst that make the test image and push and pull it with skopeo
and podman are read from the README itself (so they cannot drift) and run against a daemon
started with ``etc/angosd.toml``. Only two things are rewritten: the registry address
``127.0.0.1:5000`` becomes the test daemon's, and ``/tmp/`` becomes a fresh directory below
it (consistently, so podman's ``localhost/tmp/app`` names still match). podman runs on a
private store. The Docker block needs a running dockerd and is left to
``tests/integration/test_podman_docker.py``'s own Docker tests.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.integration.test_podman_docker import Podman

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.rst"
DEFAULT = REPO / "etc" / "angosd.toml"


def literal_blocks(text: str) -> list[list[str]]:
    """The commands of every ``::`` literal block of ``text``: its indented lines, comments dropped."""
    blocks: list[list[str]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        block: list[str] = []
        for following in lines[index + 1:]:
            if following.strip() and not following.startswith("    "):
                break
            command = following.strip().split("  #", 1)[0].strip()
            if command:
                block.append(command)
        blocks.append(block)
    return blocks


def block_of(program: str) -> list[str]:
    """The README block whose every command runs ``program`` (exactly one such block)."""
    found = [block for block in literal_blocks(README.read_text(encoding="utf-8"))
             if block and all(shlex.split(command)[0] == program for command in block)]
    assert len(found) == 1, (program, found)
    return found[0]


@pytest.fixture
def scratch() -> Iterator[str]:
    """A short fresh directory below /tmp standing for the README's ``/tmp/``."""
    directory = tempfile.mkdtemp(prefix="readme-", dir="/tmp")
    try:
        yield directory + "/"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def shipped_daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(DEFAULT),)).start()
    try:
        yield running
    finally:
        running.stop()


def rewrite(command: str, daemon: Daemon, scratch: str) -> list[str]:
    return shlex.split(command.replace("127.0.0.1:5000", daemon.host).replace("/tmp/", scratch))


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{shlex.join(argv)} exited with {result.returncode}:\n{result.stderr}"
    return result.stdout


def test_readme_skopeo_and_podman_commands(shipped_daemon: Daemon, scratch: str, tmp_path: Path) -> None:
    for command in block_of("scripts/make-test-image"):
        run(rewrite(command, shipped_daemon, scratch))
    skopeo = block_of("skopeo")
    assert len(skopeo) == 3
    for command in skopeo:
        output = run(rewrite(command, shipped_daemon, scratch))
        if " list-tags " in command:
            assert json.loads(output)["Tags"] == ["1.0"]
    source = json.loads(Path(scratch, "app", "index.json").read_text())["manifests"][0]["digest"]
    copy = json.loads(Path(scratch, "copy", "index.json").read_text())["manifests"][0]["digest"]
    assert copy == source, "the image pulled back is not the one pushed"

    run_dir = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    try:
        podman = Podman(tmp_path / "podman", run_dir)
        for command in block_of("podman"):
            podman(*rewrite(command, shipped_daemon, scratch)[1:])
        pulled = podman.inspect(f"{shipped_daemon.host}/team/app:1.0", "{{.Digest}}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    tags = shipped_daemon.request("GET", "/v2/team/app/tags/list")
    assert tags.status == 200 and json.loads(tags.body)["tags"] == ["1.0"]
    served = shipped_daemon.request("HEAD", "/v2/team/app/manifests/1.0", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    assert pulled == served.headers["docker-content-digest"], "podman pulled another image than the tag's"
