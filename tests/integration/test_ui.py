"""The web UI in a real headless Chromium against a real daemon.

Every view is opened, the pushed names and tags are found on the page, an index is
expanded, a tag and a manifest are deleted and an upload cancelled through the UI (each
checked through the API afterwards), and error pages are shown for 401, 403 and 404.
A screenshot of each view is kept under the pytest tmp dir and copied to
``/tmp/angosd-ui-screenshots/``.
"""

from __future__ import annotations

import base64
import re
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from angosd.auth.basic import hash_password
from tests.certs import CA
from tests.daemon import Daemon
from tests.integration.images import Layout, build_artifact, build_image, build_index, skopeo
from tests.ui_browser import Screenshots, chromium

CONFIG = """
[ui]
enabled = true
name = "Acme Registry"

[global]
update_pull_time = true

[repository."library"]
immutable_tags = true

[repository."team"]

[repository."mirror"]
[[repository."mirror".upstream]]
url = "http://127.0.0.1:9"
"""
TIMEOUT = 15_000  # ms, for every wait on the page


def push(daemon: Daemon, layout: Layout, target: str, *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", *extra, layout.ref, f"docker://{daemon.host}/{target}")


def expect() -> Any:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT)
    return playwright_expect


@dataclass(frozen=True)
class Site:
    daemon: Daemon
    image: Layout
    index: Layout
    artifact: Layout
    disposable: Layout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("ui")
    config = base / "angosd.toml"
    config.write_text(CONFIG)
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()
    try:
        src = str(base / "src")
        image = build_image(src, "v1", layer_sizes=(4096, 50_000), seed=21)
        push(daemon, image, "library/alpine:3.19")
        push(daemon, image, "library/alpine:latest")
        artifact = build_artifact(src, image, "sig")
        push(daemon, artifact, "library/alpine:sig")
        index = build_index(src, "multi", seed=22)
        push(daemon, index, "library/multi:1.0", "--all")
        push(daemon, build_image(src, "app", seed=23), "team/app:v1")
        disposable = build_image(src, "gone", seed=24)
        for tag in ("keep", "drop"):
            push(daemon, disposable, f"team/disposable:{tag}")
        assert daemon.request("GET", "/v2/library/alpine/manifests/3.19").status == 200
        yield Site(daemon, image, index, artifact, disposable)
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as running:
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Screenshots:
    return Screenshots(tmp_path_factory.mktemp("screenshots"))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def tags_of(daemon: Daemon, namespace: str) -> list[str]:
    response = daemon.request("GET", f"/v2/{namespace}/tags/list")
    return response.json()["tags"] if response.status == 200 else []


# -- served files --------------------------------------------------------------------------------------


def test_ui_disabled_answers_404(daemon: Daemon) -> None:
    for path in ("/", "/library/alpine", "/_ui/config", "/_ui/static/app.js"):
        response = daemon.request("GET", path)
        assert response.status == 404, path
        assert response.error_codes == ["NAME_UNKNOWN"]


def test_assets_and_config(site: Site) -> None:
    daemon = site.daemon
    assert daemon.request("GET", "/_ui/config").json() == {"name": "Acme Registry"}
    for route in ("/", "/library", "/library/alpine", "/library/alpine:3.19", f"/library/alpine@{site.image.digest}"):
        response = daemon.request("GET", route)
        assert response.status == 200, route
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert b'src="/_ui/static/app.js"' in response.body
        assert "script-src 'self'" in response.headers["content-security-policy"]
    script = daemon.request("GET", "/_ui/static/app.js")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    assert daemon.request("GET", "/_ui/static/app.js", headers={"If-None-Match": script.headers["etag"]}).status == 304
    assert daemon.request("HEAD", "/_ui/static/app.css").headers["content-length"] == \
        str(len(daemon.request("GET", "/_ui/static/app.css").body))
    for missing in ("/_ui/static/nothing.js", "/_ui/static/../resource.py", "/_ui/other", "/_ui/static/"):
        assert daemon.request("GET", missing).status == 404, missing
    assert b"cdn" not in daemon.request("GET", "/").body.lower()


# -- views ---------------------------------------------------------------------------------------------------


def test_repositories_view(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/")
    check = expect()
    check(page.locator("#brand-name")).to_have_text("Acme Registry")
    rows = page.locator("tbody tr")
    check(rows).to_have_count(3)
    check(page.locator("tr[data-name=library]")).to_contain_text("Immutable tags")
    check(page.locator("tr[data-name=library] td.num")).to_have_text("2")
    check(page.locator("tr[data-name=mirror]")).to_contain_text("Pull-through")
    check(page.locator("tr[data-name=team] td.num")).to_have_text("2")
    check(page).to_have_title("Acme Registry")
    shots.take(page, "01-repositories")
    page.get_by_role("link", name="library", exact=True).click()
    check(page).to_have_url(site.daemon.url + "/library")


def test_repository_view(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/library")
    check = expect()
    check(page.locator("h1")).to_have_text("library")
    check(page.locator("tr[data-name='library/alpine']")).to_contain_text("alpine")
    check(page.locator("tr[data-name='library/multi'] td.num").first).to_have_text("3")
    shots.take(page, "02-repository")
    page.locator("tr[data-name='library/alpine'] a").click()
    check(page).to_have_url(site.daemon.url + "/library/alpine")
    check(page.locator("h1")).to_have_text("library/alpine")


def test_namespace_view_with_referrers(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/library/alpine")
    check = expect()
    row = page.locator(f"tr[data-digest='{site.image.digest}']")
    check(row).to_contain_text("3.19")
    check(row).to_contain_text("latest")
    check(row).to_contain_text("signature")
    check(row.locator("td").nth(4)).not_to_have_text("never")  # pulled once by the fixture
    check(page.locator(f"tr[data-digest='{site.artifact.digest}']")).to_have_count(0)
    row.get_by_role("button", name=re.compile("Show 1 nested")).click()
    referrer = page.locator(f"tr[data-digest='{site.artifact.digest}']")
    check(referrer).to_contain_text("sig")
    check(referrer).to_contain_text("signature")
    shots.take(page, "03-namespace-referrers")


def test_namespace_view_follows_the_pages_of_revisions(site: Site, page: Any) -> None:
    requested: list[str] = []

    def one_per_page(route: Any) -> None:  # as if the namespace had more revisions than a page holds
        route.continue_(url=route.request.url.replace("n=1000", "n=1"))

    page.route(re.compile(r".*/_revisions\?n=1000$"), one_per_page)
    page.on("request", lambda request: requested.append(request.url) if "/_revisions" in request.url else None)
    page.goto(site.daemon.url + "/library/alpine")
    check = expect()
    row = page.locator(f"tr[data-digest='{site.image.digest}']")
    check(row).to_contain_text("3.19")
    row.get_by_role("button", name=re.compile("Show 1 nested")).click()
    check(page.locator(f"tr[data-digest='{site.artifact.digest}']")).to_contain_text("sig")
    assert len(requested) == 2 and "last=sha256:" in requested[1], requested


def test_namespace_view_expands_an_index(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/library/multi")
    check = expect()
    index_row = page.locator(f"tr[data-digest='{site.index.digest}']")
    check(index_row).to_contain_text("Index")
    check(index_row).to_contain_text("1.0")
    check(index_row).to_contain_text("2 platforms")
    check(page.get_by_text("linux/arm64")).to_have_count(0)
    toggle = index_row.get_by_role("button", name=re.compile("Show 2 nested"))
    toggle.click()
    check(toggle).to_have_attribute("aria-expanded", "true")
    check(page.locator("tr[data-depth='1']")).to_have_count(2)
    check(page.locator("tr[data-depth='1']").filter(has_text="linux/amd64")).to_have_count(1)
    check(page.locator("tr[data-depth='1']").filter(has_text="linux/arm64")).to_have_count(1)
    shots.take(page, "04-namespace-index")
    toggle.click()
    check(page.locator("tr[data-depth='1']")).to_have_count(0)


def test_manifest_details_by_tag(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/library/alpine:3.19")
    check = expect()
    check(page.locator("h1")).to_have_text("library/alpine:3.19")
    check(page.locator(".facts").first).to_contain_text(site.image.digest)
    check(page.locator(".facts").first).to_contain_text("application/vnd.oci.image.manifest.v1+json")
    check(page.locator(".facts").first).to_contain_text("linux/amd64")
    check(page.locator(".tag[data-tag='latest']")).to_have_count(1)
    check(page.locator("section.panel", has_text="Layers").locator("tbody tr")).to_have_count(2)
    check(page.locator("section.panel", has_text="Referrers")).to_contain_text("signature")
    check(page.locator("section.panel", has_text="Config")).to_contain_text("application/vnd.oci.image.config.v1+json")
    shots.take(page, "05-manifest-image")


def test_browsing_is_not_a_pull(site: Site, page: Any) -> None:
    page.goto(site.daemon.url + "/team/app:v1")
    expect()(page.locator(".facts").first).to_contain_text("Last pulled")
    revisions = site.daemon.request("GET", "/v2/_ext/team/app/_revisions").json()["revisions"]
    assert [r["last_pulled_at"] for r in revisions] == [None]


def test_manifest_details_of_an_index_child(site: Site, page: Any, shots: Screenshots) -> None:
    page.goto(site.daemon.url + "/library/multi:1.0")
    check = expect()
    platforms = page.locator("section.panel", has_text="Platforms")
    check(platforms.locator("tbody tr")).to_have_count(2)
    shots.take(page, "06-manifest-index")
    platforms.locator("tbody tr").first.locator("a").first.click()
    check(page).to_have_url(re.compile(r"/library/multi@sha256:[0-9a-f]{64}$"))
    check(page.locator(".facts").first).to_contain_text("Parent index")
    check(page.locator(".facts").first).to_contain_text(site.index.digest[:19])


def test_annotations_have_friendly_names(site: Site, page: Any, tmp_path: Path) -> None:
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.example.note.v1",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                           "size": 2},
                "layers": [],
                "annotations": {"org.opencontainers.image.source": "https://example.com/repo",
                                "org.opencontainers.image.title": "release notes", "com.example.custom": "x"}}
    import json

    body = json.dumps(manifest).encode()
    daemon = site.daemon
    blob = daemon.request("POST", "/v2/team/notes/blobs/uploads/?digest=" + manifest["config"]["digest"],
                          b"{}", {"Content-Type": "application/octet-stream"})
    assert blob.status == 201
    pushed = daemon.request("PUT", "/v2/team/notes/manifests/v1", body,
                            {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert pushed.status == 201
    page.goto(daemon.url + "/team/notes:v1")
    check = expect()
    annotations = page.locator("section.panel", has_text="Annotations")
    check(annotations).to_contain_text("Source")
    check(annotations).to_contain_text("org.opencontainers.image.source")
    check(annotations.get_by_role("link", name="https://example.com/repo")).to_have_count(1)
    check(annotations).to_contain_text("Title")
    check(annotations).to_contain_text("com.example.custom")


# -- actions ---------------------------------------------------------------------------------------------------


def test_delete_tag_then_manifest(site: Site, page: Any, shots: Screenshots) -> None:
    daemon = site.daemon
    assert tags_of(daemon, "team/disposable") == ["drop", "keep"]
    page.goto(daemon.url + "/team/disposable:keep")
    check = expect()
    page.get_by_role("button", name="Delete tag drop").click()
    dialog = page.locator("#confirm-dialog")
    check(dialog).to_be_visible()
    check(dialog).to_contain_text("drop")
    shots.take(page, "07-confirm-delete-tag")
    page.locator("#confirm-cancel").click()
    check(dialog).to_be_hidden()
    assert tags_of(daemon, "team/disposable") == ["drop", "keep"]  # cancelled: nothing happened

    page.get_by_role("button", name="Delete tag drop").click()
    page.locator("#confirm-ok").click()
    check(page.locator(".tag[data-tag='drop']")).to_have_count(0)
    check(page.locator(".toast")).to_contain_text("Tag drop deleted")
    assert tags_of(daemon, "team/disposable") == ["keep"]
    assert daemon.request("GET", f"/v2/team/disposable/manifests/{site.disposable.digest}").status == 200

    page.get_by_role("button", name="Delete manifest").click()
    check(page.locator("#confirm-dialog")).to_contain_text("keep")
    page.locator("#confirm-ok").click()
    check(page).to_have_url(daemon.url + "/team/disposable")
    check(page.locator("[role=alert]")).to_contain_text("Not found")
    assert daemon.request("GET", f"/v2/team/disposable/manifests/{site.disposable.digest}").status == 404
    assert tags_of(daemon, "team/disposable") == []


def test_cancel_upload(site: Site, page: Any, shots: Screenshots) -> None:
    daemon = site.daemon
    location = daemon.request("POST", "/v2/team/app/blobs/uploads/").headers["location"]
    assert daemon.request("PATCH", location, b"y" * 2048, {"Content-Type": "application/octet-stream"}).status == 202
    uuid = location.rsplit("/", 1)[-1]
    page.goto(daemon.url + "/team/app")
    check = expect()
    row = page.locator(f"tr[data-uuid='{uuid}']")
    check(row).to_contain_text("2.0 KiB")
    shots.take(page, "08-namespace-uploads")
    row.get_by_role("button", name=f"Cancel upload {uuid}").click()
    page.locator("#confirm-ok").click()
    check(row).to_have_count(0)
    assert daemon.request("GET", location).status == 404
    assert daemon.request("GET", "/v2/_ext/team/app/_uploads").json()["uploads"] == []


# -- errors, themes, narrow screens -------------------------------------------------------------------------


def test_not_found_message(site: Site, page: Any, shots: Screenshots) -> None:
    check = expect()
    page.goto(site.daemon.url + "/library/nothing-here")
    alert = page.locator("[role=alert]")
    check(alert).to_contain_text("Not found")
    check(alert).to_contain_text("NAME_UNKNOWN")
    shots.take(page, "09-not-found")
    page.goto(site.daemon.url + f"/library/alpine@sha256:{'0' * 64}")
    check(page.locator("[role=alert]")).to_contain_text("Not found")
    check(page.locator("[role=alert]")).to_contain_text("MANIFEST_UNKNOWN")


def test_dark_theme_and_toggle(site: Site, browser: Any, shots: Screenshots) -> None:
    check = expect()
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="dark")
    try:
        page = context.new_page()
        page.goto(site.daemon.url + "/library/alpine")
        check(page.locator(f"tr[data-digest='{site.image.digest}']")).to_be_visible()
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert _luminance(background) < 0.1, background
        shots.take(page, "10-dark-namespace")
        page.goto(site.daemon.url + "/library/alpine:3.19")
        check(page.locator("h1")).to_have_text("library/alpine:3.19")
        shots.take(page, "11-dark-manifest")
        page.locator("#theme-toggle").click()
        check(page.locator("#theme-toggle")).to_have_attribute("data-theme", "light")
        assert _luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.8
        page.reload()  # the choice is remembered
        check(page.locator("h1")).to_have_text("library/alpine:3.19")
        assert _luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.8
    finally:
        context.close()


def _luminance(css_color: str) -> float:
    red, green, blue = (int(part) for part in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


def test_narrow_screen(site: Site, browser: Any, shots: Screenshots) -> None:
    check = expect()
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="light", is_mobile=True)
    try:
        page = context.new_page()
        for route, name in (("/library/multi", "12-narrow-namespace"), ("/library/alpine:3.19", "13-narrow-manifest"),
                            ("/", "14-narrow-repositories")):
            page.goto(site.daemon.url + route)
            check(page.locator("h1")).to_be_visible()
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{route} is {width}px wide on a 390px screen"
            shots.take(page, name)
        page.goto(site.daemon.url + "/library/alpine")
        tags = page.locator(f"tr[data-digest='{site.image.digest}'] .tags").filter(has_text="3.19")
        check(tags.first).to_be_visible()  # tags move under the digest when their column is hidden
    finally:
        context.close()


# -- behind authentication -------------------------------------------------------------------------------


AUTH_CONFIG = """
[ui]
enabled = true
name = "Guarded Registry"

[global.access_policy]
default = "deny"
rules = [
  "request.action == 'ui-asset' || request.action == 'ui-config'",
  "identity.username == 'admin'",
  "identity.username == 'viewer' && request.action != 'list-revisions'",
]

[auth.identity.admin]
username = "admin"
password = "{admin}"

[auth.identity.viewer]
username = "viewer"
password = "{viewer}"
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("guarded-ui")
    config = base / "angosd.toml"
    config.write_text(AUTH_CONFIG.format(admin=hash_password("admin-pass"), viewer=hash_password("viewer-pass")))
    daemon = Daemon(str(base / "work"), str(base / "store"), configs=(str(config),)).start()
    try:
        push(daemon, build_image(str(base / "src"), "v1", seed=31), "team/guarded:v1",
             "--dest-creds", "admin:admin-pass")
        yield daemon
    finally:
        daemon.stop()


def test_refused_sign_in_shows_a_message(guarded: Daemon, browser: Any, shots: Screenshots) -> None:
    check = expect()
    # Wrong credentials, as typed into the browser's prompt: the API keeps answering 401.
    context = browser.new_context(viewport={"width": 1280, "height": 720},
                                  http_credentials={"username": "admin", "password": "wrong"})
    try:
        page = context.new_page()
        page.goto(guarded.url + "/")
        alert = page.locator("[role=alert]")
        check(alert).to_have_attribute("data-status", "401")
        check(alert).to_contain_text("Sign-in required")
        check(page.locator("#brand-name")).to_have_text("Guarded Registry")
        shots.take(page, "15-unauthorized")
    finally:
        context.close()


def test_basic_credentials_after_the_challenge(guarded: Daemon, browser: Any, shots: Screenshots) -> None:
    check = expect()
    # Playwright answers the Basic challenge of the API's 401 as a person would in the browser's prompt.
    context = browser.new_context(viewport={"width": 1280, "height": 720},
                                  http_credentials={"username": "admin", "password": "admin-pass"})
    try:
        page = context.new_page()
        page.goto(guarded.url + "/team/guarded")
        check(page.locator("tbody tr").first).to_contain_text("v1")
        shots.take(page, "16-signed-in")
    finally:
        context.close()


def test_denied_listing_shows_access_denied(guarded: Daemon, browser: Any, shots: Screenshots) -> None:
    check = expect()
    context = browser.new_context(viewport={"width": 1280, "height": 720},
                                  http_credentials={"username": "viewer", "password": "viewer-pass"})
    try:
        page = context.new_page()
        page.goto(guarded.url + "/team")
        check(page.locator("tr[data-name='team/guarded']")).to_be_visible()
        page.locator("tr[data-name='team/guarded'] a").click()
        alert = page.locator("[role=alert]")
        check(alert).to_have_attribute("data-status", "403")
        check(alert).to_contain_text("Access denied")
        shots.take(page, "17-forbidden")
    finally:
        context.close()


def test_client_certificate(tmp_path: Path, browser: Any, shots: Screenshots) -> None:
    ca = CA()
    server_cert, server_key = ca.server().write(tmp_path / "tls", "server")
    client_cert, client_key = ca.client("alice").write(tmp_path / "tls", "alice")
    bundle = ca.write(tmp_path / "tls" / "ca.crt")
    config = tmp_path / "angosd.toml"
    config.write_text(f"""
[server.tls]
server_certificate_bundle = "{server_cert}"
server_private_key = "{server_key}"
client_ca_bundle = "{bundle}"

[ui]
enabled = true

[global.access_policy]
default = "deny"
rules = ["'alice' in identity.certificate.common_names"]
""")
    daemon = Daemon(str(tmp_path / "work"), str(tmp_path / "store"), configs=(str(config),)).start()
    try:
        origin = f"https://localhost:{daemon.port}"
        context = ssl.create_default_context(cafile=bundle)
        context.load_cert_chain(client_cert, client_key)
        token = base64.b64encode(b"unused").decode()
        request = urllib.request.Request(origin + "/v2/team/certs/blobs/uploads/", method="POST",
                                          headers={"X-Test": token})
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            assert answer.status == 202
        check = expect()
        browsing = browser.new_context(
            viewport={"width": 1280, "height": 720}, ignore_https_errors=True,
            client_certificates=[{"origin": origin, "certPath": client_cert, "keyPath": client_key}])
        try:
            page = browsing.new_page()
            page.goto(origin + "/team/certs")
            check(page.locator("section.panel", has_text="Uploads in progress").locator("tbody tr")).to_have_count(1)
            shots.take(page, "18-client-certificate")
        finally:
            browsing.close()
    finally:
        daemon.stop()


@pytest.mark.parametrize("path", ["/%5Cevil.example:latest", "/%5Cevil.example/app:v1", "/%5C%5Cevil.example@x",
                                  "/%2F%2Fevil.example:latest", "/library/%5Cevil.example:1"])
def test_links_built_from_the_url_stay_on_this_site(site: Site, page: Any, path: str) -> None:
    """A crafted URL segment never becomes a link to another site (``/\\evil.example`` is
    ``//evil.example`` to browsers): every link on the page resolves to this origin."""
    page.goto(site.daemon.url + path)
    expect()(page.locator("nav.crumbs")).to_be_visible()
    hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => [a.getAttribute('href'), a.href])")
    assert hrefs, "the page shows no link at all"
    for raw, resolved in hrefs:
        assert resolved.startswith(site.daemon.url + "/"), (path, raw, resolved)


# -- paged listings --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """No repository configured; 105 first name components and 130 namespaces below ``many``:
    more than one page (100) of ``_ext/_repositories`` and of ``_ext/many/_namespaces``."""
    base = tmp_path_factory.mktemp("crowded")
    config = base / "angosd.toml"
    config.write_text("[ui]\nenabled = true\n")
    store = base / "store"
    digest = "sha256:" + "ab" * 32
    names = [f"top{number:03d}/x" for number in range(105)] + [f"many/app{number:03d}" for number in range(130)]
    for name in names:  # a tag file is what makes a namespace listed; nothing here is pulled
        tags = store / "repositories" / name / "_manifests" / "tags"
        tags.mkdir(parents=True)
        (tags / "t").write_text(digest)
    daemon = Daemon(str(base / "work"), str(store), configs=(str(config),)).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_views_follow_every_page(crowded: Daemon, page: Any) -> None:
    assert "link" in crowded.request("GET", "/v2/_ext/_repositories").headers
    check = expect()
    page.goto(crowded.url + "/")
    check(page.locator("tbody tr")).to_have_count(106)
    check(page.locator("tr[data-name=top104]")).to_be_visible()
    page.goto(crowded.url + "/many")
    check(page.locator("tbody tr")).to_have_count(130)
    check(page.locator("tr[data-name='many/app129']")).to_be_visible()
