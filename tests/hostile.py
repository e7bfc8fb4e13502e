"""Hostile values and errors, shared by the tests that check nothing user code returns
or raises can make flowing raise, hang or print garbage."""


class RaisingRepr:
    def __repr__(self):
        raise RuntimeError("no repr")

    __str__ = __repr__


class NonStrRepr:
    def __repr__(self):
        return 42


class RaisingStr:
    def __str__(self):
        raise RuntimeError("no str")


class EvilStr(str):
    """A str subclass whose methods all misbehave."""

    def strip(self, *a):
        raise RuntimeError("strip")

    def splitlines(self, *a):
        raise RuntimeError("splitlines")

    def __len__(self):
        raise RuntimeError("len")

    def translate(self, *a):
        raise RuntimeError("translate")


class EvilStrRepr:
    def __repr__(self):
        return EvilStr("looks fine\nbut is not")


class NoBool:
    """Like a numpy array: asking for its truth value raises."""

    def __bool__(self):
        raise ValueError("no truth value")

    def __repr__(self):
        return "NoBool()"


class NoEq:
    def __eq__(self, other):
        raise TypeError("no eq")

    __hash__ = object.__hash__


class NoBoolNoEq(NoBool, NoEq):
    __hash__ = object.__hash__

    def __repr__(self):
        return "NoBoolNoEq()"


class BaseRaiser:
    def __repr__(self):
        raise SystemExit("repr ends the process?")

    __str__ = __repr__


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("cannot")


class StrNonStr(Exception):
    def __str__(self):
        return 7


class StrEvil(Exception):
    def __str__(self):
        return EvilStr("evil\nmessage")


class HostileError(Exception):
    def __bool__(self):
        raise ValueError("no truth value")

    def __eq__(self, other):
        raise TypeError("no eq")

    __hash__ = Exception.__hash__

    def __str__(self):
        return "hostile\n" + "h" * 100_000


class Meta(type):
    @property
    def __name__(cls):
        raise RuntimeError("no name")


class Nameless(metaclass=Meta):
    def __repr__(self):
        raise RuntimeError("no repr either")
