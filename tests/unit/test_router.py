"""Properties of `parse_route`: total, exact on valid targets, and never fooled by encodings."""

from __future__ import annotations

import random
import re
from urllib.parse import quote

from hypothesis import assume, example, given
from hypothesis import strategies as st

from angosd.http.router import Route, parse_route

METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"]

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
COMPONENT = st.builds(lambda first, rest: first + "".join(sep + word for sep, word in rest),
                      st.text(ALNUM, min_size=1, max_size=6),
                      st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), st.text(ALNUM, min_size=1,
                                                                                              max_size=4)), max_size=2))
#: Valid namespaces, including ones whose components are the API's own keywords.
NAMESPACE = st.lists(COMPONENT | st.sampled_from(["tags", "list", "manifests", "blobs", "uploads", "referrers"]),
                     min_size=1, max_size=5).map("/".join)
TAG = st.builds(str.__add__, st.sampled_from(ALNUM + ALNUM.upper() + "_"),
                st.text(ALNUM + ALNUM.upper() + "._-", max_size=20))
DIGEST = (st.binary(min_size=32, max_size=32).map(lambda raw: f"sha256:{raw.hex()}")
          | st.binary(min_size=64, max_size=64).map(lambda raw: f"sha512:{raw.hex()}"))
REFERENCE = TAG | DIGEST
SESSION = st.uuids().map(str)

#: (path template, {method: action}) for every /v2 endpoint with a namespace; ``{arg}`` is the last segment.
ENDPOINTS: list[tuple[str, dict[str, str], st.SearchStrategy[str] | None]] = [
    ("/v2/{ns}/tags/list", {"GET": "list-tags"}, None),
    ("/v2/{ns}/manifests/{arg}", {"GET": "get-manifest", "HEAD": "get-manifest", "PUT": "put-manifest",
                                  "DELETE": "delete-manifest"}, REFERENCE),
    ("/v2/{ns}/blobs/uploads/", {"POST": "start-upload"}, None),
    ("/v2/{ns}/blobs/uploads/{arg}", {"GET": "get-upload", "PATCH": "update-upload", "PUT": "complete-upload",
                                      "DELETE": "cancel-upload"}, SESSION),
    ("/v2/{ns}/blobs/{arg}", {"GET": "get-blob", "HEAD": "get-blob", "DELETE": "delete-blob"}, DIGEST),
    ("/v2/{ns}/referrers/{arg}", {"GET": "get-referrers"}, DIGEST),
]


def action(route: Route) -> str:
    """The action's name, whether the router gives a string or an enum member whose value it is."""
    return str(getattr(route.action, "value", route.action))


@st.composite
def endpoint_requests(draw: st.DrawFn) -> tuple[str, str, str, str | None, dict[str, str]]:
    """(method, target, namespace, argument, actions) for a valid request to one endpoint."""
    template, actions, argument_strategy = draw(st.sampled_from(ENDPOINTS))
    namespace = draw(NAMESPACE)
    argument = draw(argument_strategy) if argument_strategy is not None else None
    method = draw(st.sampled_from(METHODS))
    target = template.format(ns=namespace, arg=argument)
    return method, target, namespace, argument, actions


@given(st.text(max_size=8), st.text(max_size=300))
@example("GET", "/v2/%")
@example("GET", "/v2/%2")
@example("GET", "/v2/%C0%AF/tags/list")
@example("PUT", "/v2/a/manifests/\udcff")
@example("", "")
def test_never_raises_on_text(method: str, target: str) -> None:
    route = parse_route(method, target)
    assert isinstance(action(route), str) and route.method == method


@given(st.binary(max_size=8), st.binary(max_size=300))
@example(b"GET", b"/v2/\xff\xfe/tags/list?n=\x00")
@example(b"\x00", b"?")
def test_never_raises_on_bytes(method: bytes, target: bytes) -> None:
    route = parse_route(method, target)
    assert route == parse_route(method.decode("latin-1"), target.decode("latin-1"))


@given(endpoint_requests())
@example(("GET", "/v2/a/blobs/uploads/manifests/v1", "a/blobs/uploads", "v1",
          {"GET": "get-manifest", "HEAD": "get-manifest", "PUT": "put-manifest", "DELETE": "delete-manifest"}))
@example(("GET", "/v2/tags/list/tags/list", "tags/list", None, {"GET": "list-tags"}))
def test_valid_request_round_trips(request: tuple[str, str, str, str | None, dict[str, str]]) -> None:
    method, target, namespace, argument, actions = request
    route = parse_route(method, target)
    assert route.namespace == namespace
    assert route.argument == argument
    if method in actions:
        assert action(route) == actions[method] and route.method_allowed
    else:
        assert action(route) == "unknown" and not route.method_allowed
    assert parse_route(method.encode(), target.encode()) == route


@given(endpoint_requests(), st.integers(min_value=0, max_value=2**32))
def test_percent_encoding_of_other_characters_changes_nothing(
        request: tuple[str, str, str, str | None, dict[str, str]], seed: int) -> None:
    """Escaping any character but the slash gives the same route."""
    method, target, _namespace, _argument, _actions = request
    choose = random.Random(seed)
    escaped = "".join(quote(char, safe="") if char != "/" and choose.random() < 0.5 else char for char in target)
    assert parse_route(method, escaped) == parse_route(method, target)


@given(endpoint_requests(), st.sampled_from(["%2F", "%2f"]))
@example(("GET", "/v2/a/b/blobs/uploads/", "a/b", None, {"POST": "start-upload"}), "%2f")
def test_encoded_slash_never_splits_a_namespace(request: tuple[str, str, str, str | None, dict[str, str]],
                                                slash: str) -> None:
    """An escaped slash stays inside its segment: the same endpoint, one namespace component."""
    method, target, namespace, argument, _actions = request
    assume("/" in namespace)
    joined = namespace.replace("/", slash)
    route = parse_route(method, target.replace(f"/v2/{namespace}/", f"/v2/{joined}/", 1))
    assert route.namespace == namespace.replace("/", "%2F")
    assert route.argument == argument
    assert action(route) == action(parse_route(method, target))
    if argument is not None:
        inside = parse_route(method, target[:-len(argument)] + argument[:1] + slash + argument[1:])
        assert inside.namespace == namespace and inside.argument == argument[:1] + "%2F" + argument[1:]


@given(st.text(max_size=200))
@example("/v2/a%2Fb/tags%2flist")
@example("/v2/a%252Fb/tags/list")
@example("/v2/a%%2Fb/tags/list")
def test_decoding_never_adds_a_slash(raw_path: str) -> None:
    route = parse_route("GET", raw_path)
    assert route.path.count("/") == raw_path.partition("?")[0].count("/")


@given(st.sampled_from(METHODS), NAMESPACE,
       st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?%#"), min_size=1,
               max_size=10).filter(lambda word: word not in ("tags", "manifests", "blobs", "referrers")),
       st.lists(st.from_regex(r"[a-z0-9.:_-]{1,8}", fullmatch=True), max_size=2))
def test_unknown_v2_path(method: str, namespace: str, word: str, rest: list[str]) -> None:
    target = "/".join([f"/v2/{namespace}", word, *rest]) if rest else f"/v2/{namespace}/{word}/"
    if re.search(r"/(tags/list|manifests/[^/]+|blobs/[^/]+|blobs/uploads/?|blobs/uploads/[^/]+|referrers/[^/]+)$",
                 target):
        return  # the namespace's own keywords made it a real endpoint after all
    route = parse_route(method, target)
    assert action(route) == "unknown" and route.method_allowed


@given(st.sampled_from(["PUT", "POST", "PATCH", "DELETE", "OPTIONS"]),
       st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?"), max_size=20))
def test_unknown_path_outside_v2(method: str, path: str) -> None:
    target = "/x" + path
    route = parse_route(method, target)
    assert action(route) == "unknown"


@given(st.sampled_from(["PUT", "POST", "PATCH", "DELETE"]), st.sampled_from(["/health", "/healthz", "/readyz",
                                                                              "/metrics", "/_ui/config"]))
def test_non_v2_endpoint_with_a_writing_method(method: str, path: str) -> None:
    route = parse_route(method, path)
    assert action(route) == "unknown" and not route.method_allowed


@given(st.sampled_from(["POST", "DELETE", "PUT", "PATCH"]), st.sampled_from(["/v2/", "/v2", "/v2/_catalog"]))
def test_method_not_allowed_on_base_and_catalog(method: str, target: str) -> None:
    route = parse_route(method, target)
    assert action(route) == "unknown" and not route.method_allowed


@given(NAMESPACE, DIGEST, NAMESPACE)
def test_query_fields(namespace: str, digest: str, source: str) -> None:
    mount = parse_route("POST", f"/v2/{namespace}/blobs/uploads/?mount={digest}&from={source}")
    assert (action(mount), mount.namespace, mount.digest, mount.param("from")) == ("mount-blob", namespace, digest,
                                                                                    source)
    anywhere = parse_route("POST", f"/v2/{namespace}/blobs/uploads?mount={digest}")
    assert (action(anywhere), anywhere.digest, anywhere.param("from")) == ("mount-blob", digest, None)
    plain = parse_route("POST", f"/v2/{namespace}/blobs/uploads/?from={source}&digest={digest}")
    assert (action(plain), plain.digest) == ("start-upload", digest)
    complete = parse_route("PUT", f"/v2/{namespace}/blobs/uploads/{'0' * 8}-0000-0000-0000-{'0' * 12}?digest={digest}")
    assert (action(complete), complete.digest, complete.session) == ("complete-upload", digest,
                                                                      f"{'0' * 8}-0000-0000-0000-{'0' * 12}")
    manifest = parse_route("GET", f"/v2/{namespace}/manifests/{digest}")
    assert (manifest.reference, manifest.digest, manifest.session) == (digest, None, None)
