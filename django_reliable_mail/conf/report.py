"""Where a setting lives (:class:`Path`) and where problems about it go (:class:`Report`).

Invariant: a path prints exactly as the user would write the key in ``settings.py``
(``RELIABLE_MAIL['PROVIDERS']['main']['PORT']``), whatever the keys are.
"""

from __future__ import annotations

from dataclasses import dataclass

from .values import Problem
from .wording import shown


@dataclass(frozen=True)
class Path:
    """A key path: a root (``RELIABLE_MAIL``, ``MAILERS['default']['OPTIONS']``) and keys."""

    root: str
    keys: tuple[object, ...] = ()

    def __truediv__(self, key: object) -> Path:
        return Path(self.root, (*self.keys, key))

    def __str__(self) -> str:
        return self.root + "".join(f"[{shown(key)}]" for key in self.keys)


class Report:
    """The problems found so far, in the order they were found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, id: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(f"reliable_mail.{id}", message, hint))

    def warn(self, id: str, message: str, hint: str) -> None:
        self.problems.append(Problem(f"reliable_mail.{id}", message, hint, warning=True))

    @property
    def error_count(self) -> int:
        return sum(not problem.warning for problem in self.problems)
