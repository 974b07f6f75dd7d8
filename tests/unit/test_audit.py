"""The audit log file: its hash chain, what `verify` detects, rotation, several writers, the
configuration reloads it records and the ``angosd audit verify`` command."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from angosd.auth.authorizer import SecurityState
from angosd.commands.main import main
from angosd.config import AuditConfig, Config, load_config
from angosd.daemon.assembly import build_security
from angosd.daemon.live import LiveConfig
from angosd.observability.audit import GENESIS, AuditLog, line_hash, verify_lines
from angosd.storage.pools import Pools


def chained(path: Path, **options: object) -> AuditLog:
    return AuditLog(AuditConfig(path=str(path), hash_chain=True, fsync="never", **options),  # type: ignore[arg-type]
                    lambda: 1_767_225_600.0)


def write(log: AuditLog, count: int) -> None:
    for index in range(count):
        log.record("api", "put-manifest", "success", repository="team/app", reference=f"v{index}")


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_chain_links_every_line(tmp_path: Path) -> None:
    log = chained(tmp_path / "audit.log")
    write(log, 3)
    records = [json.loads(line) for line in lines_of(tmp_path / "audit.log")]
    assert [record["seq"] for record in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert [records[i + 1]["prev"] for i in range(2)] == [records[i]["hash"] for i in range(2)]
    assert all(line_hash(record) == record["hash"] for record in records)
    verdict = verify_lines(lines_of(tmp_path / "audit.log"))
    assert (verdict.problem, verdict.lines, verdict.last_hash) == (None, 3, records[-1]["hash"])


def test_verify_detects_an_edited_line(tmp_path: Path) -> None:
    write(chained(tmp_path / "audit.log"), 4)
    lines = lines_of(tmp_path / "audit.log")
    for index in (0, 3):  # the first and the last (no later line to notice it)
        edited = list(lines)
        edited[index] = edited[index].replace(b'"team/app"', b'"team/other"')
        verdict = verify_lines(edited)
        assert verdict.problem == f"line {index + 1}: its hash does not match its content (edited)"


def test_verify_detects_a_removed_line(tmp_path: Path) -> None:
    write(chained(tmp_path / "audit.log"), 4)
    lines = lines_of(tmp_path / "audit.log")
    assert "line 2: prev is not the hash of line 1" in str(verify_lines(lines[:1] + lines[2:]).problem)
    assert "first line of the log" not in str(verify_lines(lines[1:]).problem)  # a rotated file's start is fine
    assert verify_lines(lines[:3]).problem is None  # the end: only the kept last hash tells
    last = json.loads(lines[-1])["hash"]
    assert "lines were removed at the end" in str(verify_lines(lines[:3], last=last).problem)


def test_verify_detects_reordered_lines(tmp_path: Path) -> None:
    write(chained(tmp_path / "audit.log"), 4)
    lines = lines_of(tmp_path / "audit.log")
    swapped = [lines[0], lines[2], lines[1], lines[3]]
    assert "line 2: prev is not the hash of line 1" in str(verify_lines(swapped).problem)


def test_verify_refuses_lines_without_chain(tmp_path: Path) -> None:
    log = AuditLog(AuditConfig(path=str(tmp_path / "plain.log"), fsync="never"), lambda: 0.0)
    write(log, 1)
    assert "no hash chain" in str(verify_lines(lines_of(tmp_path / "plain.log")).problem)


def test_rotation_by_size_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = chained(path, max_size=600, keep=3)
    write(log, 12)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.log") and not p.name.endswith("lock"))
    assert files == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    assert all(os.path.getsize(tmp_path / name) < 1200 for name in files)
    ordered = [tmp_path / "audit.log.3", tmp_path / "audit.log.2", tmp_path / "audit.log.1", path]
    joined = [line for file in ordered for line in lines_of(file)]
    verdict = verify_lines(joined)
    assert verdict.problem is None
    assert [json.loads(line)["seq"] for line in joined] == list(range(13 - len(joined), 13))
    for older, newer in itertools.pairwise(ordered):  # each file starts where the older one ended
        if lines_of(newer):
            assert json.loads(lines_of(newer)[0])["prev"] == json.loads(lines_of(older)[-1])["hash"]


def test_writers_sharing_the_file_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first, second = chained(path), chained(path)
    for _ in range(3):
        write(first, 1)
        write(second, 1)
    verdict = verify_lines(lines_of(path))
    assert (verdict.problem, verdict.lines) == (None, 6)


def test_external_rotation_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = chained(path)
    write(log, 2)
    os.rename(path, tmp_path / "audit.log.1")  # logrotate's rename
    write(log, 1)
    assert len(lines_of(path)) == 1
    assert verify_lines(lines_of(tmp_path / "audit.log.1") + lines_of(path)).problem is None
    os.rename(path, tmp_path / "audit.log.2")
    log.reopen()  # SIGHUP
    write(log, 1)
    assert json.loads(lines_of(path)[0])["seq"] == 4


def test_configuration_reloads_are_one_line_each(tmp_path: Path) -> None:
    config_file = tmp_path / "angosd.toml"
    config_file.write_text("[global]\nimmutable_tags = false\n")
    log = chained(tmp_path / "audit.log")

    def security(config: Config) -> SecurityState:
        reactor = object()
        return build_security(config, reactor, Pools.create(reactor, 1, 1, 1, 1))

    live = LiveConfig([str(config_file)], security(load_config([str(config_file)])), security, lambda c: c, log)
    config_file.write_text("[global]\nimmutable_tags = true\n")
    assert live.reload()
    config_file.write_text("[global]\nimmutable_tags = 3\n")
    assert not live.reload()
    records = [json.loads(line) for line in lines_of(tmp_path / "audit.log")]
    assert [(r["via"], r["action"], r["result"]) for r in records] == [("config", "reload", "success"),
                                                                     ("config", "reload", "failure")]
    assert records[0]["files"] == [str(config_file)] and "immutable_tags" in records[1]["reason"]


def test_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    write(chained(path), 3)
    assert main(["audit", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 lines, chain intact from the start of the log" in out
    lines = lines_of(path)
    path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 2: prev is not the hash of line 1" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "missing.log")]) == 2


def test_online_garbage_collection_that_deletes_or_fails_is_one_line(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from angosd.daemon.service import gc_observer
    from angosd.observability.metrics import Metrics
    from angosd.registry.gc import GcReport

    log = chained(tmp_path / "audit.log")
    observe = gc_observer(Metrics(lambda: 0.0, CollectorRegistry()), log, lambda: 50.0)
    for report, failure in [(None, None), (GcReport(blobs=4, live=4), None),  # nothing deleted: no line
                            (None, None), (GcReport(reclaimed=2, reclaimed_bytes=2048), None),
                            (None, None), (None, RuntimeError("disk gone"))]:
        observe(report, failure)
    records = [json.loads(line) for line in lines_of(tmp_path / "audit.log")]
    assert [(r["via"], r["action"], r["result"]) for r in records] == [("daemon", "gc", "success"),
                                                                     ("daemon", "gc", "failure")]
    assert (records[0]["reclaimed_blobs"], records[0]["reclaimed_bytes"]) == (2, 2048)
    assert records[1]["reason"] == "RuntimeError"


def test_an_audit_log_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    from angosd.config import ConfigError, ObservabilityConfig
    from angosd.daemon.assembly import build_audit, check_observability

    blocker = tmp_path / "file"
    blocker.write_text("")
    config = Config(observability=ObservabilityConfig(audit=AuditConfig(path=str(blocker / "audit.log"))))
    with pytest.raises(ConfigError, match=r"observability\.audit\.path: cannot open"):
        build_audit(config)
    with pytest.raises(ConfigError, match=r"observability\.audit\.path"):
        check_observability(config)
