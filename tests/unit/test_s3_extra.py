"""botocore is the optional ``s3`` extra: without it an S3 configuration stops with one line naming it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from twisted.internet import reactor

from angosd.commands import check_config
from angosd.config import Config, ConfigError, FsStoreConfig
from angosd.daemon.assembly import build_driver, build_pools
from angosd.daemon.tap import Options, makeService
from angosd.storage.fs import FilesystemDriver
from angosd.storage.s3_support import S3_EXTRA, missing_s3_support, require_s3_support

S3_CONFIG = """
[server]
workers = 1

[blob_store.s3]
endpoint = "http://127.0.0.1:9"
bucket = "registry"
access_key_id = "id"
secret_key = "secret"
"""


@pytest.fixture
def without_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import botocore`` (and every botocore submodule) fail, as when the extra is not installed."""
    for name in [name for name in sys.modules if name == "botocore" or name.startswith("botocore.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "botocore", None)  # type: ignore[arg-type]


@pytest.fixture
def s3_config(tmp_path: Path) -> str:
    path = tmp_path / "angosd.toml"
    path.write_text(S3_CONFIG)
    return str(path)


def test_with_botocore_the_s3_store_is_supported() -> None:
    assert missing_s3_support() is None
    require_s3_support()


def test_without_botocore_the_problem_names_the_extra(without_botocore: None) -> None:
    problem = missing_s3_support()
    assert problem is not None and S3_EXTRA in problem and "botocore" in problem
    assert S3_EXTRA == "pip install 'angosd[s3]'"
    with pytest.raises(ConfigError) as caught:
        require_s3_support()
    assert str(caught.value) == f"[blob_store.s3]: {problem}"


def test_without_botocore_a_filesystem_store_still_builds(without_botocore: None, tmp_path: Path) -> None:
    config = Config(blob_store=FsStoreConfig(root_dir=str(tmp_path / "store")))
    assert isinstance(build_driver(config, reactor, build_pools(config, reactor)), FilesystemDriver)


def test_without_botocore_the_daemon_stops_with_one_line(without_botocore: None, s3_config: str) -> None:
    options = Options()
    options.parseOptions(["-c", s3_config])
    with pytest.raises(SystemExit) as caught:
        makeService(options)
    message = str(caught.value.code)
    assert "\n" not in message
    assert message.startswith("angosd: configuration error: [blob_store.s3]: botocore is not installed")
    assert message.endswith(S3_EXTRA)


def test_without_botocore_check_config_reports_it_on_the_s3_table(without_botocore: None, s3_config: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config.run(argparse.Namespace(configs=[s3_config])) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{s3_config}: blob_store.s3: botocore is not installed (the S3 store signs requests with it): "
                     f"{S3_EXTRA}"]


def test_with_botocore_check_config_accepts_the_s3_table(s3_config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config.run(argparse.Namespace(configs=[s3_config])) == 0
    assert capsys.readouterr().out.splitlines() == ["ok"]
