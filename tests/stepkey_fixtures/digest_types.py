"""Types for the digest tests, importable by name in a child process (pickle)."""

import collections
import dataclasses
import enum


class Color(enum.Enum):
    RED = 1
    GREEN = "green"
    BLUE = (3, 4)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: object
    y: object = 0


@dataclasses.dataclass
class Box:
    content: object
    tags: tuple = ()


class Plain:
    """An ordinary object compared by its class and attributes."""

    def __init__(self, a, b=None):
        self.a = a
        self.b = b

    def __eq__(self, other):
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def __eq__(self, other):
        return type(other) is type(self) and (other.a, other.b) == (self.a, self.b)

    __hash__ = None


Pair = collections.namedtuple("Pair", "left right")
