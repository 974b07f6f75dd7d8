"""Webhook sections of the configuration: references, pairing rules, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from angosd.config import ConfigError, load_config

BASE = """
[auth.webhook.authz]
url = "https://authz.example/check"
timeout_ms = 800
forward_headers = ["X-Request-Id"]
[event_webhook.audit]
url = "https://siem.example/hook"
policy = "required"
events = ["manifest.push", "tag.delete"]
token = "t"
repository_filter = ["^apps$"]
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config([str(path)]), str(path)


def test_webhooks_load_with_defaults(tmp_path: Path) -> None:
    config, _ = load(tmp_path, BASE + '[global]\nauthorization_webhook = "authz"\nevent_webhooks = ["audit"]\n')
    (authz,) = config.auth.webhooks
    assert (authz.name, authz.timeout_ms, authz.cache_ttl, authz.forward_headers) == ("authz", 800, 60,
                                                                                      ("X-Request-Id",))
    (audit,) = config.event_webhooks
    assert audit.retries == 3 and audit.events == ("manifest.push", "tag.delete")
    assert config.global_.event_webhooks == ("audit",)


@pytest.mark.parametrize(("extra", "key"), [
    ('[global]\nauthorization_webhook = "nope"\n', "global.authorization_webhook"),
    ('[global]\nevent_webhooks = ["audit", "nope"]\n', "global.event_webhooks[1]"),
    ('[repository."apps"]\nauthorization_webhook = "nope"\n', "repository.apps.authorization_webhook"),
    ('[repository."apps"]\nevent_webhooks = ["nope"]\n', "repository.apps.event_webhooks[0]"),
])
def test_unknown_webhook_reference_names_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, BASE + extra)
    assert f"c.toml: {key}: no [" in str(error.value)


def test_empty_repository_webhook_disables_it(tmp_path: Path) -> None:
    config, _ = load(tmp_path, BASE + '[global]\nauthorization_webhook = "authz"\n'
                                      '[repository."apps"]\nauthorization_webhook = ""\n')
    assert config.repositories[0].authorization_webhook == ""


@pytest.mark.parametrize(("extra", "fragment"), [
    ('[auth.webhook.x]\nurl = "https://x"\n', "auth.webhook.x.timeout_ms: required key is missing"),
    ('[auth.webhook.x]\nurl = "https://x"\ntimeout_ms = 5\nclient_private_key = "/k"\n',
     "auth.webhook.x.client_private_key: client_certificate_bundle and client_private_key must be set together"),
    ('[event_webhook.x]\nurl = "https://x"\nevents = ["manifest.explode"]\n', "event_webhook.x.events[0]"),
    ('[event_webhook.x]\nurl = "https://x"\npolicy = "sometimes"\n', "event_webhook.x.policy"),
    ('[auth.webhook.x]\nurl = "ftp://x"\ntimeout_ms = 5\n', "auth.webhook.x.url"),
])
def test_bad_webhook_sections(tmp_path: Path, extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load(tmp_path, BASE + extra)
