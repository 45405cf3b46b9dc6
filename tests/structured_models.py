"""Pydantic models of varied shape for the structured-output tests: what a client passes to the
``openai`` client's ``parse``. Every string is bounded (a length, a pattern, an enum or a format):
the tiny base's weights are random, and an unbounded string would run on for hundreds of tokens
before it happened to close; the grammar, not the model, is what makes every answer valid.
"""

from __future__ import annotations

import datetime
import enum
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, Field

__all__ = ["MODELS"]


class Color(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    MID = 5
    HIGH = 9


class Flags(BaseModel):
    ready: bool
    count: int = Field(ge=0, le=99)


class Paint(BaseModel):
    color: Color


class Mood(BaseModel):
    mood: Literal["happy", "sad", "calm"]


class Point(BaseModel):
    x: int = Field(ge=-50, le=50)
    y: int = Field(ge=-50, le=50)


class Segment(BaseModel):
    start: Point
    end: Point


class Scores(BaseModel):
    scores: list[Annotated[int, Field(ge=0, le=10)]] = Field(max_length=4)


class Person(BaseModel):
    age: Optional[int] = Field(default=None, ge=0, le=120)
    nickname: Optional[str] = Field(default=None, max_length=6)


class Ratio(BaseModel):
    ratio: float = Field(ge=0, le=1)


class Tag(BaseModel):
    tag: str = Field(min_length=1, max_length=8)


class Code(BaseModel):
    code: str = Field(pattern=r"^[A-Z]{3}-[0-9]{2}$")


class Path(BaseModel):
    points: list[Point] = Field(max_length=2)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Union[Cat, Dog]


class Pair(BaseModel):
    pair: tuple[Annotated[int, Field(ge=0, le=99)], bool]


class Leaf(BaseModel):
    value: int = Field(ge=0, le=9)


class Branch(BaseModel):
    leaf: Leaf
    weight: float = Field(ge=-1, le=1)


class Tree(BaseModel):
    left: Branch
    right: Branch


class Priority(BaseModel):
    level: Level


class Meeting(BaseModel):
    day: datetime.date


class Switches(BaseModel):
    switches: list[bool] = Field(min_length=1, max_length=3)


class Owner(BaseModel):
    home: Optional[Point] = None
    name: str = Field(max_length=5)


class Version(BaseModel):
    schema_version: Literal[2]


class Settings(BaseModel):
    a: bool
    b: int = Field(ge=0, le=3)
    c: Color
    d: Literal["x", "y"]
    e: Optional[bool] = None
    f: int = Field(ge=-9, le=9)
    g: str = Field(max_length=3)
    h: list[Literal["on", "off"]] = Field(max_length=2)


class Reading(BaseModel):
    celsius: Optional[float] = Field(default=None, ge=-40, le=60)
    unit: Literal["C"]


class Inventory(BaseModel):
    items: list[Mood] = Field(max_length=3)
    total: int = Field(ge=0, le=1000)


class Palette(BaseModel):
    colors: list[Color] = Field(min_length=1, max_length=3)
    primary: Optional[Color] = None


MODELS: list[type[BaseModel]] = [Flags, Paint, Mood, Segment, Scores, Person, Ratio, Tag, Code, Path, Pet, Pair,
                                 Tree, Priority, Meeting, Switches, Owner, Version, Settings, Reading, Inventory,
                                 Palette]
