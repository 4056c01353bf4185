"""The ``smb`` target: objects are files on an SMB share, spoken to with smbprotocol.

No kernel CIFS mount is involved: smbprotocol's ``smbclient`` API talks SMB 3 straight to
the server (Samba, a NAS, a Windows or Active Directory file server), with encryption
required by default. Objects live under ``\\\\server\\share\\path``; ``path`` (a directory
inside the share) is created at ``open()`` when missing, the share itself never is.

Atomicity is the dir target's recipe over the wire: a write goes to ``name + TMP_MARK +
random`` (created with mode 'x'), is flushed (SMB2 FLUSH) and then renamed over ``name``
with ``smbclient.replace`` (a plain rename fails with EEXIST over an existing name).
``create_exclusive`` opens the final name with mode 'x', which the server refuses
atomically when it exists.

The connection (session, credentials, the timeouts that keep a hung server from hanging a
backup, and the mapping of smbprotocol's failures onto dmbackup.errors) is
targets/smb_session.py; this module is the config and the object operations.
"""

from __future__ import annotations

import errno
import logging
import re
import stat as stat_mod
from dataclasses import dataclass
from typing import Iterator

from dmbackup.configsection import check_secret_file
from dmbackup.errors import AuthFailed, NotFound, TargetUnavailable, TransientTargetError
from dmbackup.targets.base import Capabilities, ObjectInfo, ObjectWriter, Target, validate_name
from dmbackup.targets.smb_session import RECEIVE_TIMEOUT_ENV, SmbSession, import_smbclient
from dmbackup.targets.writer import TempRenameWriter

__all__ = ["RECEIVE_TIMEOUT_ENV", "SmbConfig", "SmbTarget", "build", "parse_config"]

READ_CHUNK = 8 << 20                    # Samba's max read size; smbprotocol splits by credits
FILE_ATTRIBUTE_DIRECTORY = 0x10

log = logging.getLogger(__name__)


# --- config ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmbConfig:
    name: str
    type: str
    server: str
    share: str
    username: str
    password_file: str
    port: int = 445
    path: str = ""
    encrypt: bool = True
    timeout: int = 60
    max_object_size: int | None = None


_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_BAD_SHARE_CHARS = set('\\/:*?"<>|')


def normalize_path(value: str) -> str:
    """'/backups/dm/' or 'backups\\dm' -> 'backups/dm'; refuses '..' and odd characters."""
    parts = [p for p in re.split(r"[\\/]+", value) if p]
    for p in parts:
        if p in (".", "..") or any(c in _BAD_SHARE_CHARS or ord(c) < 32 for c in p):
            raise ValueError(p)
    return "/".join(parts)


def parse_config(name, s, kind):
    server = s.str("server")
    if not _HOST.match(server):
        raise s.error("server", f"expected a host name or IP address (no slashes, no share), got {server!r}")
    share = s.str("share")
    if any(c in _BAD_SHARE_CHARS or ord(c) < 32 for c in share):
        raise s.error("share", f"expected a share name such as \"backup\" (no slashes), got {share!r}")
    raw_path = s.str("path", "")
    try:
        path = normalize_path(raw_path)
    except ValueError:
        raise s.error("path", f"expected a directory inside the share such as \"dmbackup\", got {raw_path!r}") from None
    username = s.str("username")
    password_file = s.abs_path("password_file")
    check_secret_file(password_file, file=s.file, field=f"{s.path}.password_file", what="SMB password")
    return SmbConfig(
        name=name,
        type=kind,
        server=server,
        share=share,
        username=username,
        password_file=password_file,
        port=s.int("port", 445, min=1, max=65535),
        path=path,
        encrypt=s.bool("encrypt", True),
        timeout=s.int("timeout", 60, min=1, max=86400),
        max_object_size=s.size("max_object_size", None),
    )


def build(cfg: SmbConfig, app=None) -> "SmbTarget":
    return SmbTarget(
        cfg.name, server=cfg.server, share=cfg.share, username=cfg.username,
        password_file=cfg.password_file, port=cfg.port, path=cfg.path, encrypt=cfg.encrypt,
        timeout=cfg.timeout, max_object_size=cfg.max_object_size,
    )


class _SmbWriter(TempRenameWriter):
    def __init__(self, target: "SmbTarget", name: str):
        super().__init__(name, target.session.unc(name))
        self.target = target
        self.f = target._create(name, self.tmp)

    def _map(self, exc):
        return self.target.session.map(exc, self.name)

    def _write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = self.f.write(view)
            view = view[n:]

    def _commit(self) -> None:
        self.f.flush()
        self.f.close()
        import_smbclient().replace(self.tmp, self.final, **self.target.session.kw())

    def _discard(self, error) -> None:
        try:
            self.f.close()
        except Exception:
            pass
        if isinstance(error, TransientTargetError):
            return          # the connection is dead or silent: see TempRenameWriter._discard
        try:
            import_smbclient().remove(self.tmp, **self.target.session.kw())
        except Exception:
            pass


class SmbTarget(Target):
    kind = "smb"

    def __init__(self, name: str, *, server: str, share: str, username: str, password_file: str,
                 port: int = 445, path: str = "", encrypt: bool = True, timeout: int = 60,
                 max_object_size: int | None = None):
        self.name = name
        self.session = SmbSession(name, server=server, share=share, username=username,
                                  password_file=password_file, port=port, path=normalize_path(path),
                                  encrypt=encrypt, timeout=timeout)
        self.capabilities = Capabilities(
            read_back=True,                  # size and SHA-256 of every volume read back
            max_object_size=max_object_size or Capabilities.max_object_size,
            atomic_rename=True,
            posix_metadata=False,
            network=True,
        )

    @property
    def url(self) -> str:
        return self.session.url

    def describe(self) -> str:
        return self.session.describe()

    def open(self) -> None:
        self.session.open()

    def close(self) -> None:
        self.session.close()

    # -- directories --------------------------------------------------------------------------
    def _mkparents(self, name: str, *, fresh: bool = False) -> None:
        parent = name.rpartition("/")[0]
        if not parent or (parent in self.session.known_dirs and not fresh):
            return
        self.session.call(parent, import_smbclient().makedirs, self.session.unc(parent), exist_ok=True)
        self.session.known_dirs.add(parent)

    def _create(self, name: str, unc: str):
        """Open ``unc`` with mode 'x' for writing, creating the parents of ``name``."""
        smbclient = import_smbclient()
        self._mkparents(name)
        try:
            return self.session.call(name, smbclient.open_file, unc, mode="xb", buffering=0)
        except NotFound:
            # the directory we remembered was removed behind our back: make it again
            self._mkparents(name, fresh=True)
            return self.session.call(name, smbclient.open_file, unc, mode="xb", buffering=0)

    # -- the interface --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        validate_name(name)
        return _SmbWriter(self, name)

    def create_exclusive(self, name: str, data: bytes) -> None:
        unc = self.session.unc(name)
        f = self._create(name, unc)
        try:
            view = memoryview(data).cast("B")
            while view:
                n = f.write(view)
                view = view[n:]
            f.flush()
            f.close()
        except Exception as exc:
            err = self.session.map(exc, name)
            try:
                f.close()
            except Exception:
                pass
            if not isinstance(err, TransientTargetError):
                try:
                    import_smbclient().remove(unc, **self.session.kw())
                except Exception:
                    pass
            raise err from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        unc = self.session.unc(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            self.stat(name)          # still NotFound for a missing object
            return b""
        smbclient = import_smbclient()
        try:
            with smbclient.open_file(unc, mode="rb", buffering=0, share_access="rwd", **self.session.kw()) as f:
                if offset:
                    f.seek(offset)
                if length is None:
                    return f.readall()
                out = bytearray()
                while len(out) < length:
                    chunk = f.read(min(length - len(out), READ_CHUNK))
                    if not chunk:
                        break
                    out += chunk
                return bytes(out)
        except Exception as exc:
            raise self.session.map(exc, name) from exc

    def stat(self, name: str) -> ObjectInfo:
        unc = self.session.unc(name)
        st = self.session.call(name, import_smbclient().stat, unc)
        if stat_mod.S_ISDIR(st.st_mode):
            raise NotFound(f"{name} is a directory, not an object, on {self.describe()}")
        return ObjectInfo(name, st.st_size)

    def _scan(self, directory: str, want_dirs: bool) -> list[str]:
        unc = self.session.dir_unc(directory)
        smbclient = import_smbclient()
        names = []
        try:
            with smbclient.scandir(unc, **self.session.kw()) as it:
                for entry in it:
                    # entry.smb_info comes with the listing; DirEntry.stat() would reconnect
                    # without our port and credentials
                    is_dir = bool(entry.smb_info.file_attributes & FILE_ATTRIBUTE_DIRECTORY)
                    if is_dir == want_dirs:
                        names.append(entry.name)
        except Exception as exc:
            err = self.session.map(exc, directory or "the target root")
            if isinstance(err, NotFound) or getattr(exc, "errno", None) == errno.ENOTDIR:
                return []
            raise err from exc
        return names

    def list(self, directory: str = "") -> Iterator[str]:
        if directory:
            validate_name(directory)
        for n in sorted(self._scan(directory, want_dirs=False)):
            # files someone else put on the share with names we cannot address are skipped
            full = f"{directory}/{n}" if directory else n
            try:
                yield validate_name(full)
            except ValueError:
                log.debug("skipping foreign file %r on %s", full, self.describe())

    def list_dirs(self, directory: str = "") -> Iterator[str]:
        if directory:
            validate_name(directory)
        for n in sorted(self._scan(directory, want_dirs=True)):
            full = f"{directory}/{n}" if directory else n
            try:
                yield validate_name(full)
            except ValueError:
                log.debug("skipping foreign directory %r on %s", full, self.describe())

    def delete(self, name: str) -> None:
        unc = self.session.unc(name)
        try:
            self.session.call(name, import_smbclient().remove, unc)
        except NotFound:
            pass

    def rmdir(self, name: str) -> None:
        self.session.call(name, import_smbclient().rmdir, self.session.unc(name))

    def free_space(self) -> int | None:
        try:
            vol = self.session.call("free space", import_smbclient().stat_volume, self.session.root)
        except (TransientTargetError, AuthFailed):
            raise
        except TargetUnavailable:
            return None            # the server cannot tell (e.g. not supported)
        return int(vol.caller_available_size)
