"""Run the real dmbackup CLI with its target operations counted, and SIGKILL itself at one.

Test-side only (nothing of this is in the product): ``python -m tests.faults.killer ARGS``
patches the write-side methods of ``DirTarget`` and ``SmbTarget`` (and their object writers)
and then runs ``dmbackup ARGS`` exactly as ``python -m dmbackup ARGS`` would. Every call is
an *event* ``(index, op, name)``; ops are ``create_exclusive``, ``write``, ``commit``,
``delete`` and ``sync``. Names are the target's full object names.

Environment:

``DMB_FAULT_TRACE=FILE``  append one JSON line per event (``{"i", "op", "name", "size"}``),
                          flushed before the operation runs.
``DMB_FAULT_KILL=SPEC``   SIGKILL this process at one event. SPEC is either
                          ``#N:WHEN`` (the event with index N) or ``OP|REGEX|K:WHEN`` (the
                          K-th event, counting from 1, whose op is OP and whose name matches
                          REGEX with ``re.search``). WHEN is ``before`` (the operation never
                          runs), ``after`` (it completed) or ``mid`` (a write: half of its bytes
                          are written first; other ops: same as ``before``).

A run whose SPEC never matched exits normally; tests assert the exit status was -9.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys

_state = {"i": 0, "matched": 0}
_trace = os.environ.get("DMB_FAULT_TRACE")
_spec = os.environ.get("DMB_FAULT_KILL")


def _parse(spec: str | None):
    if not spec:
        return None
    body, _, when = spec.rpartition(":")
    if when not in ("before", "after", "mid"):
        raise SystemExit(f"killer: bad WHEN in {spec!r}")
    if body.startswith("#"):
        return ("index", int(body[1:]), None, None, when)
    op, rx, k = body.split("|")
    return ("match", op, re.compile(rx), int(k), when)


_KILL = _parse(_spec)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _event(op: str, name: str, size: int | None = None) -> str | None:
    """Record the event; return WHEN if this is the one to die at."""
    i = _state["i"]
    _state["i"] += 1
    if _trace:
        with open(_trace, "a") as f:
            f.write(json.dumps({"i": i, "op": op, "name": name, "size": size}) + "\n")
    if _KILL is None:
        return None
    if _KILL[0] == "index":
        return _KILL[4] if _KILL[1] == i else None
    _, kop, rx, k, when = _KILL
    if kop == op and rx.search(name):
        _state["matched"] += 1
        if _state["matched"] == k:
            return when
    return None


def _wrap(cls, meth: str, op: str, name_of, size_of=None, can_half: bool = False) -> None:
    real = getattr(cls, meth)

    def wrapper(self, *args, **kwargs):
        when = _event(op, name_of(self, *args), size_of(*args) if size_of else None)
        if when == "before" or (when == "mid" and not can_half):
            _die()
        if when == "mid":
            data = bytes(args[0])
            real(self, data[: len(data) // 2])
            _die()
        out = real(self, *args, **kwargs)
        if when == "after":
            _die()
        return out

    setattr(cls, meth, wrapper)


def install() -> None:
    from dmbackup.targets import dir as dir_mod

    _wrap(dir_mod._FileWriter, "write", "write", lambda w, data: w.name, lambda data: len(data), True)
    _wrap(dir_mod._FileWriter, "commit", "commit", lambda w: w.name)
    _wrap(dir_mod.DirTarget, "create_exclusive", "create_exclusive", lambda t, name, data: name)
    _wrap(dir_mod.DirTarget, "delete", "delete", lambda t, name: name)
    _wrap(dir_mod.DirTarget, "sync", "sync", lambda t: "")
    try:
        from dmbackup.targets import smb as smb_mod
    except ImportError:        # pragma: no cover - smbprotocol missing
        return
    _wrap(smb_mod._SmbWriter, "write", "write", lambda w, data: w.name, lambda data: len(data), True)
    _wrap(smb_mod._SmbWriter, "commit", "commit", lambda w: w.name)
    _wrap(smb_mod.SmbTarget, "create_exclusive", "create_exclusive", lambda t, name, data: name)
    _wrap(smb_mod.SmbTarget, "delete", "delete", lambda t, name: name)


if __name__ == "__main__":
    install()
    from dmbackup.cli.main import app

    sys.argv[0] = "dmbackup"
    app(prog_name="dmbackup")
