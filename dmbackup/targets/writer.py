"""The writer protocol of every target that writes a temporary name and renames it.

The dir, SMB and NFS (userspace) targets stream an object into ``name + TMP_MARK + random``
and make it visible with one rename on ``commit()``; they differ only in how bytes travel and
how their errors read. ``TempRenameWriter`` holds what they share:

- the temporary's name (``temp_name``), next to the final name so the rename never crosses a
  directory, and recognisable by ``base.is_temporary`` so a cleaner finds leftovers;
- size accounting: ``size`` counts the bytes accepted by ``write``;
- the end states: ``commit()`` and ``abort()`` are idempotent and final (a second call does
  nothing, ``abort()`` after ``commit()`` keeps the object), ``write()`` after either is a
  programming error (ValueError); a failed ``write`` or ``commit`` discards the temporary,
  ends the writer and raises the target's own error. An interrupt (KeyboardInterrupt: a
  second Ctrl-C, the daemon's job deadline) is no error of the medium and passes untouched:
  nothing more is asked of a medium that may be hung, and the temporary is left for the
  next run's cleaner.

A subclass opens the temporary in its ``__init__`` (after ``super().__init__``) and provides
``_write`` (all of ``data``), ``_commit`` (make durable, rename over the final name) and
``_discard`` (close and remove the temporary, best effort, never raising); ``_map`` turns a
raw error (OSError, smbprotocol's) into the dmbackup error tree.
"""

from __future__ import annotations

import secrets

from dmbackup.targets.base import TMP_MARK, ObjectWriter, validate_name


def temp_name(final: str) -> str:
    """A fresh temporary name beside ``final`` (a path, UNC path or bare file name)."""
    return f"{final}{TMP_MARK}{secrets.token_hex(4)}"


class TempRenameWriter(ObjectWriter):
    """See the module docstring. ``name`` is the object name (for messages and errors),
    ``final`` where the object lands in the target's own terms."""

    def __init__(self, name: str, final: str):
        self.name = validate_name(name)
        self.final = final
        self.tmp = temp_name(final)
        self._size = 0
        self._done = False

    # -- what a subclass provides ------------------------------------------------------------
    def _write(self, data) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _discard(self, error: BaseException | None) -> None:
        """Close and remove the temporary; never raises. ``error`` is what ended the writer
        (None for an explicit abort): after a dead connection removing it would only wait
        for another timeout, and the next run's cleaner removes it anyway."""
        raise NotImplementedError

    def _map(self, exc: BaseException) -> BaseException:
        return exc

    # -- the protocol ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def write(self, data) -> None:
        if self._done:
            raise ValueError(f"write to a finished writer for {self.name}")
        try:
            self._write(data)
        except Exception as exc:
            self._fail(exc)
        self._size += len(data)

    def commit(self) -> None:
        if self._done:
            return
        try:
            self._commit()
        except Exception as exc:
            self._fail(exc)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard(None)

    def _fail(self, exc: BaseException):
        """End the writer after ``exc`` (raised by _write/_commit): discard the temporary and
        raise the target's error. Called inside the ``except`` block, so the raw error stays
        the new one's ``__context__`` (the USB target reads fusefat's EPERM there)."""
        err = self._map(exc)
        self._done = True
        self._discard(err)
        if err is exc:
            raise
        raise err from exc
