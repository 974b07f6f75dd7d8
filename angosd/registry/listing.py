"""Namespaces in name order, one page at a time, reading only what the page needs.

Namespaces are nested directories below ``repositories/``. Their names sort as strings,
which is not the order of a depth-first walk: ``a-b`` sorts between ``a`` and ``a/b``
(``-`` and ``.`` sort before ``/``). `namespaces_after` therefore gives each directory
``c`` two places among its siblings: ``c`` itself, and ``c/`` for everything below it, and
visits them in the order of those keys. A page starts at the directory entries that can
hold a name after ``last`` and lists each directory a batch at a time, so its cost grows
with the page and the depth of the names, not with the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from angosd.registry import paths
from angosd.storage.interface import IStorageDriver

#: Directory entries read per listing call.
BATCH = 256
#: A character sorting after every character of a name component (``[a-z0-9._-]``).
_ABOVE = "~"


def _before(component: str) -> str:
    """A string sorting just before ``component``: no name component lies between them."""
    return component[:-1] + chr(ord(component[-1]) - 1) + _ABOVE


def _first_child(after: str | None, base: str) -> str | None:
    """The listing cursor of a directory whose names start with ``base``: the entries that
    can hold a name after ``after`` sort after the returned string (None: all of them)."""
    if after is None or not after.startswith(base):
        return None
    component = after[len(base):].split("/", 1)[0]
    if not component:
        return None
    # Every prefix of the component followed by "-" or "." holds names after ``after``
    # below it ("a/x" > "a-b"): start at the shortest such prefix.
    cut = min((i for i, c in enumerate(component) if c in "-."), default=len(component))
    return _before(component[:max(1, cut)])


async def namespaces_after(driver: IStorageDriver, after: str | None, holds: Callable[[str], Awaitable[bool]],
                           under: str | None = None) -> AsyncIterator[str]:
    """Names of the namespaces for which ``holds(name)`` is true, sorted, each after ``after``.

    With ``under``, only ``under`` itself and the names below ``under/``. ``holds`` is
    asked in name order, only for names the caller goes on to consume.
    """
    if under is not None:
        if (after is None or under > after) and await holds(under):
            yield under
        async for name in _below(driver, paths.namespace_dir(under), f"{under}/", after, holds):
            yield name
        return
    async for name in _below(driver, paths.REPOSITORIES, "", after, holds):
        yield name


async def _below(driver: IStorageDriver, directory: str, base: str, after: str | None,
                 holds: Callable[[str], Awaitable[bool]]) -> AsyncIterator[str]:
    """The names held below ``directory``, whose names start with ``base``, in order."""
    if after is not None and after >= base + _ABOVE:
        return
    cursor = _first_child(after, base)
    pending: list[str] = []  # "c/" keys waiting for siblings that sort before them; smallest last

    async def group(child: str) -> AsyncIterator[str]:
        prefix = f"{base}{child}/"
        if after is not None and after >= prefix + _ABOVE:
            return
        async for name in _below(driver, f"{directory}/{child}", prefix, after, holds):
            yield name

    while True:
        children = await driver.children_after(directory, cursor, BATCH)
        for child in children:
            cursor = child
            if child.startswith("_") or child.startswith("."):
                continue
            while pending and pending[-1] + "/" < child:
                async for name in group(pending.pop()):
                    yield name
            name = base + child
            if (after is None or name > after) and await holds(name):
                yield name
            pending.append(child)
        if len(children) < BATCH:
            break
    while pending:
        async for name in group(pending.pop()):
            yield name
