"""``Record``: a small slotted value class, for results and events.

Fields are the class's ``__slots__``, in order; ``_defaults`` gives the
fields that may be left out. ``repr()`` of a record never raises, whatever
its fields hold (each is shown with ``events.safe_repr``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .text import safe_repr


class Record:
    """A slotted record with keyword defaults: what ``@dataclass(slots=True)`` would
    give, without importing dataclasses (which pulls in ``inspect``) at start-up."""

    __slots__: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} arguments")
        for name, value in zip(names, args):
            setattr(self, name, value)
        for name in names[len(args):]:
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
            elif name in self._defaults:
                setattr(self, name, self._defaults[name])
            else:
                raise TypeError(f"{type(self).__name__} missing argument {name!r}")
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected {', '.join(kwargs)}")

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name, None) for name in self.__slots__}

    def __repr__(self) -> str:

        fields = ", ".join(f"{n}={safe_repr(getattr(self, n, None), 200)}"
                           for n in self.__slots__)
        return f"{type(self).__name__}({fields})"
