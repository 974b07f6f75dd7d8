"""Scopes, grants coverage, and the check-config warning about the anonymous-login trap."""

from __future__ import annotations

from pathlib import Path

from angosd.actions import Route
from angosd.auth.basic import hash_password
from angosd.auth.token_service import Scope, covers, parse_scope, required_scope
from angosd.commands.check_config import check
from angosd.http.router import parse_route

USERS = '[auth.identity.ci]\nusername = "ci"\npassword = "{hash}"\n'


def test_parse_scope() -> None:
    assert parse_scope("repository:team/app:pull,push") == Scope("repository", "team/app", ("pull", "push"))
    assert parse_scope("repository:localhost:5000/app:pull") == Scope("repository", "localhost:5000/app", ("pull",))
    assert parse_scope("repository(plugin):x:pull") == Scope("repository", "x", ("pull",))
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", ("*",))
    assert parse_scope("nonsense") is None
    assert parse_scope("repository::pull") is None


def route(method: str, path: str) -> Route:
    return parse_route(method, path)


def test_required_scopes() -> None:
    assert required_scope(route("GET", "/v2/")) == []
    assert required_scope(route("HEAD", "/v2/a/blobs/sha256:00")) == [("repository", "a", ("pull",))]
    assert required_scope(route("PUT", "/v2/a/manifests/v1")) == [("repository", "a", ("pull", "push"))]
    assert required_scope(route("POST", "/v2/a/blobs/uploads/?mount=sha256:00&from=b")) == [
        ("repository", "a", ("pull", "push")), ("repository", "b", ("pull",))]
    assert required_scope(route("DELETE", "/v2/a/manifests/sha256:00")) == [("repository", "a", ("delete",))]
    assert required_scope(route("GET", "/v2/_catalog")) == [("registry", "catalog", ("*",))]


def test_covers() -> None:
    grants = [("repository", "a", ("pull",)), ("repository", "b", ("*",))]
    assert covers(grants, [("repository", "a", ("pull",))])
    assert not covers(grants, [("repository", "a", ("pull", "push"))])
    assert covers(grants, [("repository", "b", ("pull", "push")), ("repository", "a", ("pull",))])
    assert not covers(grants, [("repository", "c", ("pull",))])
    assert covers([], [])


def test_check_config_warns_about_the_anonymous_login_trap(tmp_path: Path) -> None:
    users = USERS.format(hash=hash_password("x"))
    trap = tmp_path / "trap.toml"
    trap.write_text('[global.access_policy]\ndefault = "deny"\n'
                    "rules = [\"request.action == 'get-api-version'\", \"identity.username == 'ci'\"]\n" + users)
    warnings: list[str] = []
    assert check([str(trap)], warn=warnings.append) == []
    assert any("get-api-version" in w and "token_service" in w for w in warnings)

    fine = tmp_path / "fine.toml"
    fine.write_text('[global.access_policy]\ndefault = "deny"\nrules = ["identity.username == \'ci\'"]\n' + users)
    warnings = []
    assert check([str(fine)], warn=warnings.append) == []
    assert warnings == []


def test_check_config_reports_an_unreadable_token_key(tmp_path: Path) -> None:
    config = tmp_path / "tokens.toml"
    config.write_text(f'[auth.token_service]\nsigning_key = "{tmp_path / "missing.pem"}"\n')
    problems = check([str(config)])
    assert len(problems) == 1
    assert "auth.token_service.signing_key" in problems[0]
    assert "missing.pem" in problems[0]
