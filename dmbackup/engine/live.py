"""Restoring into the live mail store (no --to): non-destructive, into Restored-<date>."""

from __future__ import annotations

from ..errors import UsageError


def restore_live(app, target_name, **kw):
    raise UsageError("restore into the live store is not available in this version: "
                     "restore with --to DIR and move the result into place")
