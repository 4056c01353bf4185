"""What every engine operation returns: one face for the CLI, the daemon and scripts.

A ``Result`` knows its exit code (0, or 1 when something needs a look; failures are raised
as DmError, never returned), its warnings, the documented ``--json`` object (``as_dict``,
the contract in README.md: field names never change) and the line(s) a person reads
(``summary``). A command module is then: parse options -> one engine call -> print
``summary()`` or ``as_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmbackup.errors import EXIT_OK, EXIT_WARNING


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

    def summary(self) -> str:
        """What a person sees on a terminal (without ``--json``)."""
        return "\n".join(self.warnings)


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
