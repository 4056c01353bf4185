"""LDIF (RFC 2849) as slapcat writes it: ``parse_ldif`` reads content records, ``_ldif_line``
writes one attribute line."""

from __future__ import annotations

import base64


def parse_ldif(data: bytes | str) -> list[tuple[str, dict[str, list[bytes]]]]:
    """Content records of an LDIF file (RFC 2849: folded lines, ``::`` base64 values, comments)
    -> [(dn, {lower-case attribute name (with options): [values]})] in file order. ``<`` URL
    values and change records are not expected in a slapcat dump and are rejected."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    entries: list[tuple[str, dict[str, list[bytes]]]] = []
    lines: list[bytes] = []
    for raw in data.replace(b"\r\n", b"\n").split(b"\n"):
        if raw.startswith(b" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    dn: str | None = None
    attrs: dict[str, list[bytes]] = {}
    for line in lines + [b""]:
        if line.startswith(b"#"):
            continue
        if not line.strip():
            if dn is not None:
                entries.append((dn, attrs))
            dn, attrs = None, {}
            continue
        name, sep, rest = line.partition(b":")
        if not sep:
            raise ValueError(f"not an LDIF line: {line[:60]!r}")
        if rest.startswith(b":"):
            value = base64.b64decode(rest[1:].strip())
        elif rest.startswith(b"<"):
            raise ValueError("URL values are not supported in a dump")
        else:
            value = rest[1:] if rest.startswith(b" ") else rest
            value = value.lstrip(b" ")
        key = name.decode("ascii").strip().lower()
        if key == "version" and dn is None:
            continue
        if key == "dn":
            dn = value.decode("utf-8")
        elif dn is None:
            raise ValueError(f"LDIF attribute before dn: {key}")
        elif key == "changetype":
            raise ValueError("an LDIF change record is not a dump")
        else:
            attrs.setdefault(key, []).append(value)
    return entries


def _ldif_line(name: str, value: bytes) -> bytes:
    """``name: value``, or ``name:: base64`` when the value is not a SAFE-STRING."""
    safe = (not value or (value[0] not in b" :<" and value[-1:] != b" "
                          and all(0 < c < 128 and c not in (10, 13) for c in value)))
    if safe:
        return name.encode() + b": " + value + b"\n"
    return name.encode() + b":: " + base64.b64encode(value) + b"\n"
