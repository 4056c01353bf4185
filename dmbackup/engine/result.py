"""What every engine operation returns: one face for the CLI, the daemon and scripts.

A ``Result`` knows its exit code (0, or 1 when something needs a look; failures are raised
as DmError, never returned), its warnings, the documented ``--json`` object (``as_dict``,
the contract in README.md: field names never change) and the line(s) a person reads
(``summary``). A command module is then: parse options -> one engine call -> print
``summary()`` or ``as_dict()`` (``dmbackup.cli.common.show``).

What a command prints, and where:

- ``notes()``: lines for stderr, printed first (by default ``warning: ...`` for the first
  ``MAX_NOTES`` warnings; ``--json`` has them all);
- ``summary()`` without ``--json``, ``as_json()`` with it, on stdout. ``as_json()`` is
  ``as_dict()``, except for listings, whose ``--json`` is a JSON list (``snapshots``);
- ``exit_code``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmbackup.errors import EXIT_OK, EXIT_WARNING

MAX_NOTES = 20          # warnings a person sees on stderr; --json has them all


@dataclass
class Result:
    warnings: list[str] = field(default_factory=list, kw_only=True)

    @property
    def exit_code(self) -> int:
        return EXIT_WARNING if self.warnings else EXIT_OK

    def as_dict(self) -> dict:
        """The ``--json`` object. Subclasses spell out their documented fields."""
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["exit_code"] = self.exit_code
        return d

    def as_json(self) -> Any:
        """What ``--json`` prints: ``as_dict()``, or a list for a listing."""
        return self.as_dict()

    def summary(self) -> str:
        """What a person sees on a terminal (without ``--json``)."""
        return "\n".join(self.warnings)

    def notes(self) -> list[str]:
        """Lines for stderr, printed before the summary or the JSON."""
        return [f"warning: {w}" for w in self.warnings[:MAX_NOTES]]


@dataclass
class DictResult(Result):
    """A result that is a documented JSON object already (e.g. ``status``); ``text`` is its summary."""

    data: dict = field(default_factory=dict)
    text: str = ""
    code: int | None = None

    @property
    def exit_code(self) -> int:
        if self.code is not None:
            return self.code
        return super().exit_code

    def as_dict(self) -> dict:
        return self.data

    def summary(self) -> str:
        return self.text
