"""Names, tags and references: the strings people type to point at an adapter version.

Grammar (as in container registries and MLflow aliases)::

    name                 the version tagged ``latest``
    name:tag             the version a tag points at
    name@3               version 3
    name@sha256:<hex>    the version whose content digest starts with <hex> (at least 6 digits)

Names and tags double as folder and URL segments, so anything that could escape a folder
(``..``, a leading or doubled ``/``, backslashes) or be confused with the grammar is refused here,
once, for every front end. A name may be ``org/name``, as Hub repo ids are: one ``/`` between two
parts that are each a plain name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .echo import echo
from .errors import InvalidName, InvalidReference
from .integers import parse_decimal

__all__ = ["Reference", "parse_reference", "validate_name", "validate_tag", "LATEST"]

LATEST = "latest"
# fullmatch, not match: "$" also matches before a trailing newline, which would let "name\n" in.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{6,64})")
# ASCII digits only ("²".isdigit() is true), and few enough that int() is cheap and never refuses.


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe adapter name; raise ``InvalidName`` saying why not.

    A name is one part or two joined by one ``/`` (``org/name``, as Hub repo ids are), each part
    checked on its own, so no name is empty, absolute, ``..`` or more than one folder deep.
    """
    parts = name.split("/") if isinstance(name, str) else [name]
    if len(parts) > 2 or not all(isinstance(p, str) and _NAME.fullmatch(p) and ".." not in p for p in parts):
        raise InvalidName(
            f"invalid adapter name {echo(name)}: use letters, digits, '.', '_' and '-' (no '..'), starting with a "
            "letter or digit, at most 128 characters; an 'org/name' form may hold one '/'"
        )
    return name


def validate_tag(tag: str) -> str:
    """Tags share the name alphabet, but may not look like a version number or a digest."""
    if not isinstance(tag, str) or not _NAME.fullmatch(tag) or ".." in tag or tag.isdigit() or tag.startswith("sha256"):
        raise InvalidName(
            f"invalid tag {echo(tag)}: use letters, digits, '.', '_' and '-', not a bare number or 'sha256...'"
        )
    return tag


@dataclass(frozen=True)
class Reference:
    """A parsed reference; exactly one of ``tag``, ``version``, ``digest`` is set."""

    name: str
    tag: str | None = None
    version: int | None = None
    digest: str | None = None  # hex prefix, without "sha256:"

    def __str__(self) -> str:
        if self.bare:
            return self.name
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.digest is not None:
            return f"{self.name}@sha256:{self.digest}"
        return f"{self.name}:{self.tag}"
    bare: bool = False  # the string was just the name (so ``tag`` is the implied "latest")


def parse_reference(ref: str) -> Reference:
    """Parse a reference string; raise ``InvalidReference`` with the accepted forms on failure."""
    if not isinstance(ref, str) or not ref:
        raise InvalidReference("empty adapter reference")
    try:
        if "@" in ref:
            name, _, rest = ref.partition("@")
            validate_name(name)
            version = parse_decimal(rest)
            if version is not None:
                if version < 1:
                    raise InvalidReference(f"invalid reference {echo(ref)}: versions start at 1")
                return Reference(name, version=version)
            m = _DIGEST.fullmatch(rest)
            if m:
                return Reference(name, digest=m.group(1))
            raise InvalidReference(
                f"invalid reference {echo(ref)}: after '@' give a version number or sha256:<at least 6 hex digits>"
            )
        if ":" in ref:
            name, _, tag = ref.partition(":")
            return Reference(validate_name(name), tag=validate_tag(tag))
        return Reference(validate_name(ref), tag=LATEST, bare=True)
    except InvalidName as e:
        raise InvalidReference(f"invalid reference {echo(ref)}: {e}") from e
