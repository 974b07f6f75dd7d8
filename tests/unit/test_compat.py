"""angosd.compat: the private Twisted names it relies on still exist, and nobody else uses any."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pathlib
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.web.http import HTTPChannel
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

import twisted
from angosd import compat
from angosd.compat import PRIVATE_NAMES, PrivateName

ANGOSD = pathlib.Path(compat.__file__).resolve().parent
COMPAT = pathlib.Path(compat.__file__).resolve()
TWISTED = pathlib.Path(twisted.__file__).resolve().parent
GETATTR_LIKE = {"getattr", "hasattr", "setattr", "delattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --------------------------------------------------------------------------- the names compat relies on


def resolve(dotted: str) -> Any:
    """The module or class at ``dotted`` (a module path, then attributes)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def assigned_on_self(cls: type, name: str) -> bool:
    """Whether ``cls`` or one of its bases assigns ``self.<name>`` in its source."""
    for klass in cls.__mro__:
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                return True
    return False


def kind_problem(private: PrivateName) -> str | None:
    """Why ``private`` is not what compat expects in the installed Twisted, or None."""
    try:
        owner = resolve(private.owner)
    except (ImportError, AttributeError):
        return f"{private.owner} is gone"
    try:
        # static look-up on classes (methods stay functions); modules may be deprecation proxies
        found = inspect.getattr_static(owner, private.name) if isinstance(owner, type) \
            else getattr(owner, private.name)
    except AttributeError:
        found = None
        if private.kind != "attribute" or not isinstance(owner, type) or not assigned_on_self(owner, private.name):
            return "it is gone"
    if private.kind == "class" and not isinstance(found, type):
        return f"it is no longer a class ({type(found).__name__})"
    if private.kind == "method" and not inspect.isfunction(found):
        return f"it is no longer a method ({type(found).__name__})"
    if private.kind == "classmethod" and not isinstance(found, classmethod):
        return f"it is no longer a classmethod ({type(found).__name__})"
    if private.kind == "attribute" and callable(found) and not isinstance(found, type):
        return f"it is no longer a plain attribute ({type(found).__name__})"
    return None


@pytest.mark.parametrize("private", PRIVATE_NAMES, ids=lambda p: f"{p.owner}.{p.name}")
def test_private_name_still_exists(private: PrivateName) -> None:
    problem = kind_problem(private)
    assert problem is None, (
        f"Twisted {twisted.__version__}: {private.owner}.{private.name} ({private.kind}) is not as angosd.compat "
        f"expects: {problem}. angosd uses it for: {private.why}. Adapt angosd/compat.py to this Twisted "
        f"release, or pin Twisted below it in setup.py.")


def test_kind_check_notices_a_missing_or_changed_name() -> None:
    assert kind_problem(PrivateName("twisted.web.http.Request", "_noSuchThing", "attribute", "")) == "it is gone"
    assert kind_problem(PrivateName("twisted.web.http.Nope", "_x", "attribute", "")) == "twisted.web.http.Nope is gone"
    assert "no longer a method" in str(kind_problem(
        PrivateName("twisted.web.http.Request", "_disconnected", "method", "")))
    assert "no longer a classmethod" in str(kind_problem(
        PrivateName("twisted.protocols.tls.TLSMemoryBIOProtocol", "_write", "classmethod", "")))


def private_names_used(tree: ast.AST, defined_here: set[str]) -> set[str]:
    """Private names ``tree`` reads, imports, overrides or looks up by string, minus its own."""
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names if is_private(alias.name))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in GETATTR_LIKE \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and is_private(node.args[1].value):
            used.add(node.args[1].value)
        elif isinstance(node, ast.ClassDef):
            used.update(item.name for item in node.body
                        if isinstance(item, ast.FunctionDef) and is_private(item.name))
    return used - defined_here


def test_compat_lists_every_private_name_it_uses() -> None:
    tree = ast.parse(COMPAT.read_text())
    own = {node.name for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef)}
    listed = {private.name for private in PRIVATE_NAMES}
    unlisted = private_names_used(tree, own) - listed
    assert not unlisted, f"angosd/compat.py uses private names missing from PRIVATE_NAMES: {sorted(unlisted)}"


# --------------------------------------------------------------------------- the compat functions work


def test_request_line_is_read_from_the_channel_before_the_body() -> None:
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /v2/lib/x/blobs/uploads/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert compat.request_line(channel) == (b"PUT", b"/v2/lib/x/blobs/uploads/1")
    assert compat.request_line(DummyChannel()) == (b"", b"")
    channel.connectionLost(None)  # type: ignore[arg-type]


def test_request_disconnected_follows_the_connection() -> None:
    request = DummyRequest([b""])
    assert compat.request_disconnected(request) is False
    request._disconnected = True
    assert compat.request_disconnected(request) is True


def test_buffered_bytes_counts_unwritten_data_and_refuses_other_transports() -> None:
    from twisted.internet.abstract import FileDescriptor

    class Sink(FileDescriptor):
        def startWriting(self) -> None:
            pass

    descriptor = Sink()
    descriptor.connected = True
    assert compat.buffered_bytes(descriptor) == 0
    descriptor.write(b"abcde")
    assert compat.buffered_bytes(descriptor) == 5
    assert compat.buffered_bytes(StringTransport()) is None


# --------------------------------------------------------------------------- nobody else uses them


@functools.cache
def twisted_private_names() -> frozenset[str]:
    """Every private name the installed Twisted defines (tests excluded), and its private modules."""
    names: set[str] = set()
    for path in TWISTED.rglob("*.py"):
        if "test" in path.relative_to(TWISTED).parts[:-1]:
            continue
        if is_private(path.stem):
            names.add(path.stem)
        if is_private(path.parent.name):
            names.add(path.parent.name)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and is_private(node.id):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and is_private(node.attr):
                names.add(node.attr)
    return frozenset(names)


def twisted_class_privates(cls: type) -> set[str]:
    """The private names of the Twisted classes among ``cls``'s bases (methods, attributes, ``self._x``)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("twisted."):
            continue
        names.update(name for name in vars(klass) if is_private(name))
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                    and is_private(node.attr):
                names.add(node.attr)
    return names


def private_twisted_uses(source: str, namespace: Mapping[str, object]) -> Iterator[str]:
    """Each use of a private Twisted name in the module ``source`` (its objects in ``namespace``).

    Flags: importing a private Twisted module or name; ``x._name`` or ``getattr(x, "_name")``
    where Twisted defines ``_name`` and this module does not; and, in a class with Twisted
    bases, overriding or using (``self._name``) a private name of those bases.
    """
    tree = ast.parse(source)
    tw = twisted_private_names()
    inherited: dict[ast.ClassDef, set[str]] = {}
    for node in tree.body:
        cls = namespace.get(node.name) if isinstance(node, ast.ClassDef) else None
        if isinstance(node, ast.ClassDef) and isinstance(cls, type):
            inherited[node] = twisted_class_privates(cls)
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            own.add(node.attr)
    own -= set().union(*inherited.values()) if inherited else set()

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "twisted":
            module = node.module or ""
            if any(is_private(part) for part in module.split(".")):
                yield f"line {line}: imports from private module {module}"
            for alias in node.names:
                if is_private(alias.name):
                    yield f"line {line}: imports private {module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "twisted" and any(is_private(p) for p in alias.name.split(".")):
                    yield f"line {line}: imports private module {alias.name}"
        elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr in tw and node.attr not in own:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield f"line {line}: uses {ast.unparse(node)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in GETATTR_LIKE \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            name = node.args[1].value
            if isinstance(name, str) and is_private(name) and name in tw and name not in own:
                yield f"line {line}: uses {ast.unparse(node)}"
    for cls_node, privates in inherited.items():
        for node in ast.walk(cls_node):
            line = getattr(node, "lineno", 0)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in privates:
                yield f"line {line}: {cls_node.name} overrides Twisted's private {node.name}"
            elif isinstance(node, ast.Attribute) and node.attr in privates and isinstance(node.value, ast.Name) \
                    and node.value.id in ("self", "cls"):
                yield f"line {line}: {cls_node.name} uses Twisted's private {node.value.id}.{node.attr}"
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in privates:
                yield f"line {line}: {cls_node.name} sets Twisted's private {node.id}"


def module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ANGOSD.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def test_only_compat_uses_private_twisted_names() -> None:
    found: list[str] = []
    for path in sorted(ANGOSD.rglob("*.py")):
        if path.resolve() == COMPAT or path.name == "__main__.py":
            continue
        module = importlib.import_module(module_name(path))
        found += [f"{path.relative_to(ANGOSD.parent)}: {use}"
                  for use in private_twisted_uses(path.read_text(), vars(module))]
    assert not found, ("private Twisted names outside angosd/compat.py (move each behind a function there, "
                       "listed in PRIVATE_NAMES):\n" + "\n".join(found))


BAD_MODULE = '''
from twisted.protocols.tls import BufferingTLSTransport
from twisted.web._newclient import RequestGenerationFailed
from twisted.web.client import _HTTP11ClientFactory
import twisted.web._newclient


class Own:
    def __init__(self):
        self._path = '/'


def route(channel, transport, own, reactor):
    own._path
    reactor._exitSignal = None
    getattr(transport, "_tempDataLen")
    return channel._command


class Fast(BufferingTLSTransport):
    _lostTLSConnection = False

    def _write(self, data):
        self._tlsConnection.send(data)
        self._fresh = True
'''


def test_the_scan_finds_each_kind_of_use() -> None:
    namespace: dict[str, object] = {}
    exec(compile(BAD_MODULE, "<bad>", "exec"), namespace)
    uses = list(private_twisted_uses(BAD_MODULE, namespace))
    expected = [
        "imports from private module twisted.web._newclient",
        "imports private twisted.web.client._HTTP11ClientFactory",
        "imports private module twisted.web._newclient",
        "uses getattr(transport, '_tempDataLen')",
        "uses channel._command",
        "uses reactor._exitSignal",
        "Fast overrides Twisted's private _write",
        "Fast uses Twisted's private self._tlsConnection",
        "Fast sets Twisted's private _lostTLSConnection",
    ]
    for text in expected:
        assert any(text in use for use in uses), (text, uses)
    assert not any("_path" in use or "_fresh" in use for use in uses), uses


def test_pooled_client_connections_read_large_pieces() -> None:
    from twisted.internet import reactor
    from twisted.web.client import HTTPConnectionPool

    class Transport(StringTransport):
        bufferSize = 64 * 1024  # a socket transport's read size, as Twisted sets it

    pool = HTTPConnectionPool(reactor, persistent=False)
    compat.quiet_connection_pool(pool)
    factory = pool._factory(lambda protocol: None, None)
    transport = Transport()
    factory.buildProtocol(None).makeConnection(transport)
    assert transport.bufferSize == compat.CLIENT_READ_SIZE > 64 * 1024
    assert pool._factory.noisy is False
