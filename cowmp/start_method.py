"""The start method's name, ``"cowfork"``, and a form of it that imports cowmp when it
is unpickled (docs/design.md §6).

A spawned or forkserver child is told its parent's default start method and sets it
before it imports anything else; a parent whose default is ``"cowfork"`` sends the name
as an :class:`ImportingMethodName`, whose unpickling imports cowmp first, which
registers the method.
"""

from __future__ import annotations

__all__ = ["METHOD", "ImportingMethodName"]

METHOD = "cowfork"


class ImportingMethodName(str):
    """A start-method name whose unpickling imports cowmp, and so registers cowfork."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_method_name, (str(self),))


def _method_name(name: str) -> str:
    return name
