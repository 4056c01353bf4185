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

Connections. Each target keeps its own smbclient connection cache, so resetting one target
after a failure never tears down another's session, and every call passes ``port=`` and the
credentials, so smbclient can transparently reconnect after a reset. The password is read
from ``password_file`` at ``open()``; it is never logged nor put into an exception message.

A hung server must not hang a backup. smbprotocol reads the receive timeout from
``SMB_EXPERIMENTAL_TRANSPORT_RECEIVE_TIMEOUT`` when it creates a connection: after that many
idle seconds its worker thread sends an echo, and when the echo is also unanswered after as
long again it closes the connection, which wakes every waiting request with
SMBConnectionClosed. We therefore set the variable to half the configured ``timeout`` while
any SMB target is open, so a silent server is detected within about ``timeout`` seconds.
That covers requests waiting for an answer, but not a request that cannot even be sent
because the server stopped reading and the TCP window is full: smbprotocol's socket is
blocking with no timeout, and its worker then deadlocks on the send lock. Every connection
put into our cache therefore gets ``SO_SNDTIMEO`` too (a blocked send then fails with
EAGAIN). Both reach into smbprotocol internals (``Connection._receive_timeout``,
``Tcp._sock``); they are guarded so a future smbprotocol without them only loses that
protection.

Errors map onto dmbackup.errors: a wrong password is ``AuthFailed``; a missing share, a
closed port or an unknown host is ``TargetUnavailable``; a dropped or silent connection is
``TransientTargetError`` (after the connection cache is reset, so the next call reconnects);
a missing object is ``NotFound``; a full disk or quota is ``NoSpace``. Retrying is not done
here but by ``retry.RetryingTarget`` around any target.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import secrets
import socket
import stat as stat_mod
import struct
import threading
from dataclasses import dataclass
from typing import Iterator

from dmbackup.config import check_secret_file
from dmbackup.errors import AuthFailed, ConfigError, NoSpace, NotFound, TargetUnavailable, TransientTargetError
from dmbackup.targets.base import (
    TMP_MARK,
    AlreadyExists,
    Capabilities,
    ObjectInfo,
    ObjectWriter,
    Target,
    validate_name,
)

RECEIVE_TIMEOUT_ENV = "SMB_EXPERIMENTAL_TRANSPORT_RECEIVE_TIMEOUT"
READ_CHUNK = 8 << 20                    # Samba's max read size; smbprotocol splits by credits
FILE_ATTRIBUTE_DIRECTORY = 0x10

# NTSTATUS codes (MS-ERREF 2.3.1); smbprotocol names only some of them.
_AUTH_STATUSES = {
    0xC000006A,  # WRONG_PASSWORD
    0xC000006D,  # LOGON_FAILURE
    0xC000006E,  # ACCOUNT_RESTRICTION
    0xC000006F,  # INVALID_LOGON_HOURS
    0xC0000070,  # INVALID_WORKSTATION
    0xC0000071,  # PASSWORD_EXPIRED
    0xC0000072,  # ACCOUNT_DISABLED
    0xC0000064,  # NO_SUCH_USER
    0xC0000193,  # ACCOUNT_EXPIRED
    0xC0000224,  # PASSWORD_MUST_CHANGE
    0xC0000234,  # ACCOUNT_LOCKED_OUT
}
_NO_SPACE_STATUSES = {0xC000007F, 0xC0000044}          # DISK_FULL, QUOTA_EXCEEDED
_DENIED_STATUSES = {0xC0000022, 0xC00000CA}            # ACCESS_DENIED, NETWORK_ACCESS_DENIED
_BAD_SHARE_STATUSES = {0xC00000CC}                     # BAD_NETWORK_NAME
_TRANSIENT_STATUSES = {
    0xC00000C9,  # NETWORK_NAME_DELETED
    0xC0000203,  # USER_SESSION_DELETED
    0xC000035C,  # NETWORK_SESSION_EXPIRED
    0xC000009A,  # INSUFFICIENT_RESOURCES
    0xC0000205,  # INSUFF_SERVER_RESOURCES
    0xC00000B5,  # IO_TIMEOUT
    0xC0000466,  # SERVER_UNAVAILABLE
    0xC000020C,  # CONNECTION_DISCONNECTED
    0xC000020D,  # CONNECTION_RESET
}

# smbprotocol's worker thread logs a full traceback at ERROR when a connection dies, and
# smbclient warns when it cannot log off a dead one. We map and report those failures
# ourselves (as TransientTargetError with one readable line), so keep them out of the log.
logging.getLogger("smbprotocol.connection").setLevel(logging.CRITICAL)
logging.getLogger("smbclient._pool").setLevel(logging.CRITICAL)

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
    repository = True


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


# --- the receive timeout, a process-wide setting in smbprotocol ------------------------------
_timeouts_lock = threading.Lock()
_timeouts: dict[int, int] = {}          # id(open target) -> receive timeout in seconds
_env_before: str | None = None


def _hold_receive_timeout(key: int, seconds: int) -> None:
    global _env_before
    with _timeouts_lock:
        if not _timeouts:
            _env_before = os.environ.get(RECEIVE_TIMEOUT_ENV)
        _timeouts[key] = seconds
        os.environ[RECEIVE_TIMEOUT_ENV] = str(min(_timeouts.values()))


def _release_receive_timeout(key: int) -> None:
    with _timeouts_lock:
        if _timeouts.pop(key, None) is None:
            return
        if _timeouts:
            os.environ[RECEIVE_TIMEOUT_ENV] = str(min(_timeouts.values()))
        elif _env_before is None:
            os.environ.pop(RECEIVE_TIMEOUT_ENV, None)
        else:
            os.environ[RECEIVE_TIMEOUT_ENV] = _env_before


class _ConnectionCache(dict):
    """smbclient's connection cache for one target; arms every new connection's timeouts.

    smbclient creates connections itself (also when it silently reconnects inside a call)
    and stores them with ``cache[key] = connection``: that is the one place to see them all.
    """

    def __init__(self, seconds: int):
        super().__init__()
        self.seconds = seconds

    def __setitem__(self, key, connection):
        if hasattr(connection, "_receive_timeout"):
            connection._receive_timeout = self.seconds
        sock = getattr(getattr(connection, "transport", None), "_sock", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", self.seconds, 0))
            except OSError:
                pass
        super().__setitem__(key, connection)


# --- the target -------------------------------------------------------------------------------
def _import_smbclient():
    import smbclient

    return smbclient


class _SmbWriter(ObjectWriter):
    def __init__(self, target: "SmbTarget", name: str):
        self.target = target
        self.name = name
        self.final = target._unc(name)
        self.tmp = f"{self.final}{TMP_MARK}{secrets.token_hex(4)}"
        self.f = target._create(name, self.tmp)
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if self._done:
            raise ValueError(f"writer for {self.name} is already committed or aborted")
        try:
            view = memoryview(data).cast("B")
            while view:
                n = self.f.write(view)
                view = view[n:]
        except Exception as exc:
            err = self.target._map(exc, self.name)
            self._discard(remote=not isinstance(err, TransientTargetError))
            raise err from exc
        self._size += len(data)

    def commit(self) -> None:
        if self._done:
            return
        smbclient = _import_smbclient()
        try:
            self.f.flush()
            self.f.close()
            smbclient.replace(self.tmp, self.final, **self.target._kw())
        except Exception as exc:
            err = self.target._map(exc, self.name)
            self._discard(remote=not isinstance(err, TransientTargetError))
            raise err from exc
        self._done = True

    def abort(self) -> None:
        if not self._done:
            self._discard(remote=True)

    def _discard(self, remote: bool) -> None:
        """Forget the temporary; remove it unless the connection is known to be dead.

        After a dropped or silent connection, removing would only wait for another timeout:
        the temporary stays and the next run's cleaner removes it (temporaries are listed).
        """
        self._done = True
        try:
            self.f.close()
        except Exception:
            pass
        if remote:
            try:
                _import_smbclient().remove(self.tmp, **self.target._kw())
            except Exception:
                pass


class SmbTarget(Target):
    kind = "smb"

    def __init__(self, name: str, *, server: str, share: str, username: str, password_file: str,
                 port: int = 445, path: str = "", encrypt: bool = True, timeout: int = 60,
                 max_object_size: int | None = None):
        self.name = name
        self.server = server
        self.share = share
        self.username = username
        self.password_file = password_file
        self.port = port
        self.path = normalize_path(path)
        self.encrypt = encrypt
        self.timeout = timeout
        # half of it per phase: idle -> echo -> no answer -> connection closed (see docstring)
        self.receive_timeout = max(1, math.ceil(timeout / 2))
        self.capabilities = Capabilities(
            read_back=True,                  # size and SHA-256 of every volume read back
            max_object_size=max_object_size or Capabilities.max_object_size,
            atomic_rename=True,
            posix_metadata=False,
        )
        self._share_unc = rf"\\{server}\{share}"
        self._root = self._share_unc + ("\\" + self.path.replace("/", "\\") if self.path else "")
        self._cache = _ConnectionCache(self.receive_timeout)
        self._password: str | None = None
        self._known_dirs: set[str] = set()
        self._opened = False
        self._lock = threading.Lock()

    # -- naming -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"//{self.server}/{self.share}" + (f"/{self.path}" if self.path else "")

    def describe(self) -> str:
        return f"smb target {self.name!r} ({self.url})"

    def _unc(self, name: str) -> str:
        validate_name(name)
        return self._root + "\\" + name.replace("/", "\\")

    def _dir_unc(self, directory: str) -> str:
        return self._unc(directory) if directory else self._root

    def _kw(self) -> dict:
        self._ensure_open()
        return {
            "username": self.username,
            "password": self._password,
            "port": self.port,
            "encrypt": True if self.encrypt else None,   # None: encrypt only if the server asks
            "connection_timeout": self.timeout,
            "connection_cache": self._cache,
        }

    # -- session ------------------------------------------------------------------------------
    def _read_password(self) -> str:
        try:
            with open(self.password_file, encoding="utf-8") as f:
                pw = f.read()
        except OSError as exc:
            raise ConfigError(f"SMB password file {self.password_file} cannot be read: {exc.strerror}",
                              field=f"targets.{self.name}.password_file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"SMB password file {self.password_file} is not UTF-8 text",
                              field=f"targets.{self.name}.password_file") from None
        pw = pw.rstrip("\r\n")
        if not pw:
            raise ConfigError(f"SMB password file {self.password_file} is empty",
                              field=f"targets.{self.name}.password_file")
        return pw

    def _ensure_open(self) -> None:
        if not self._opened:
            self.open()

    def open(self) -> None:
        with self._lock:
            if self._opened:
                return
            self._password = self._read_password()
            _hold_receive_timeout(id(self), self.receive_timeout)
            self._opened = True
        try:
            self._check_share()
        except BaseException:
            self.close()
            raise

    def _check_share(self) -> None:
        smbclient = _import_smbclient()
        kw = self._kw()
        try:
            smbclient.register_session(
                self.server, username=self.username, password=self._password, port=self.port,
                encrypt=kw["encrypt"], connection_timeout=self.timeout, connection_cache=self._cache)
            st = smbclient.stat(self._share_unc, **kw)
        except Exception as exc:
            err = self._map(exc, "connecting")
            if isinstance(err, NotFound):
                err = self._share_missing()
            raise err from exc
        if not stat_mod.S_ISDIR(st.st_mode):
            raise self._share_missing()
        if self.path:
            try:
                smbclient.makedirs(self._root, exist_ok=True, **kw)
                st = smbclient.stat(self._root, **kw)
            except Exception as exc:
                raise self._map(exc, f"creating {self.path}") from exc
            if not stat_mod.S_ISDIR(st.st_mode):
                raise TargetUnavailable(f"{self.describe()}: {self.path} exists on the share but is not a directory")

    def close(self) -> None:
        with self._lock:
            if not self._opened:
                return
            self._opened = False
            self._password = None
            self._known_dirs.clear()
        try:
            _import_smbclient().reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        finally:
            _release_receive_timeout(id(self))

    def _drop_connections(self) -> None:
        """Forget every connection of this target without a polite log-off.

        Shutting the socket down first wakes a thread blocked in send or recv on it, and makes
        smbclient's reset skip the log-off a dead or silent server would never answer.
        """
        for conn in list(self._cache.values()):
            sock = getattr(getattr(conn, "transport", None), "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            _import_smbclient().reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        except Exception:
            self._cache.clear()
        self._known_dirs.clear()

    # -- errors ---------------------------------------------------------------------------------
    def _share_missing(self) -> TargetUnavailable:
        return TargetUnavailable(
            f"{self.describe()}: share {self.share!r} does not exist on server {self.server}: "
            "check the share name (it is case-insensitive, without slashes)")

    def _silent(self, what: str) -> TransientTargetError:
        return TransientTargetError(
            f"{self.describe()}: no answer from the server within {self.timeout}s ({what}): "
            "it may be hung or overloaded")

    def _map(self, exc: BaseException, what: str) -> Exception:
        """Translate an smbprotocol/socket exception into the dmbackup error tree."""
        from smbprotocol import exceptions as smbexc

        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, smbexc.SMBException):
            text = str(exc)
            if "connect" in text.lower() or isinstance(exc.__cause__, OSError):
                self._drop_connections()
                return TargetUnavailable(
                    f"cannot reach //{self.server}/{self.share} (port {self.port}): "
                    f"{text}; check the server name, the port and the firewall")
            return TargetUnavailable(f"{self.describe()}: {what}: {text}")

        status = getattr(exc, "ntstatus", None)
        if status is None and isinstance(exc, smbexc.SMBResponseException):
            status = exc.status

        if status in _AUTH_STATUSES or isinstance(exc, smbexc.SMBAuthenticationError):
            self._drop_connections()
            return AuthFailed(
                f"authentication failed for user {self.username} on //{self.server}/{self.share}: "
                f"check the user name and the password in {self.password_file}")
        if status in _BAD_SHARE_STATUSES:
            self._drop_connections()
            return self._share_missing()
        if status in _NO_SPACE_STATUSES or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"{self.describe()} is full while writing {what}: free space on the share and run again")
        if status in _DENIED_STATUSES:
            return TargetUnavailable(
                f"permission denied on {self.describe()} ({what}): give user {self.username} "
                "read and write access to the share")
        if status in _TRANSIENT_STATUSES:
            self._drop_connections()
            return TransientTargetError(f"{self.describe()}: the server dropped the session ({what})")

        if isinstance(exc, smbexc.SMBOSError):
            if exc.errno == errno.ENOENT:
                return NotFound(f"{what} not found on {self.describe()}")
            if exc.errno == errno.EEXIST:
                return AlreadyExists(f"{what} already exists")
            return TargetUnavailable(f"{self.describe()}: SMB error on {what}: {exc.strerror}")

        if isinstance(exc, smbexc.SMBConnectionClosed):
            self._drop_connections()
            if "timed out" in str(exc).lower():
                return self._silent(what)
            return TransientTargetError(f"{self.describe()}: connection lost ({what})")
        if isinstance(exc, (TimeoutError, socket.timeout, BlockingIOError)):
            self._drop_connections()
            return self._silent(what)
        if isinstance(exc, OSError):
            # BrokenPipeError, ConnectionResetError, ConnectionAbortedError, EPIPE, ...
            self._drop_connections()
            return TransientTargetError(
                f"{self.describe()}: connection lost ({what}): {exc.strerror or type(exc).__name__}")
        if isinstance(exc, smbexc.SMBException):
            text = str(exc)
            if "encryption is required" in text.lower():
                self._drop_connections()
                return TargetUnavailable(
                    f"{self.describe()}: the server does not offer SMB 3 encryption, which this target "
                    f"requires: enable it on the server, or set encrypt = false in [targets.{self.name}]")
            if "timeout" in text.lower():
                self._drop_connections()
                return self._silent(what)
            self._drop_connections()
            return TargetUnavailable(f"{self.describe()}: SMB error on {what}: {text}")
        # spnego and other unexpected failures: never retried, never with arguments shown
        self._drop_connections()
        return TargetUnavailable(f"{self.describe()}: unexpected error on {what}: {type(exc).__name__}")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **self._kw(), **kwargs)
        except Exception as exc:
            raise self._map(exc, what) from exc

    # -- directories --------------------------------------------------------------------------
    def _mkparents(self, name: str, *, fresh: bool = False) -> None:
        parent = name.rpartition("/")[0]
        if not parent or (parent in self._known_dirs and not fresh):
            return
        self._call(parent, _import_smbclient().makedirs, self._unc(parent), exist_ok=True)
        self._known_dirs.add(parent)

    def _create(self, name: str, unc: str):
        """Open ``unc`` with mode 'x' for writing, creating the parents of ``name``."""
        smbclient = _import_smbclient()
        self._mkparents(name)
        try:
            return self._call(name, smbclient.open_file, unc, mode="xb", buffering=0)
        except NotFound:
            # the directory we remembered was removed behind our back: make it again
            self._mkparents(name, fresh=True)
            return self._call(name, smbclient.open_file, unc, mode="xb", buffering=0)

    # -- the interface --------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        with self.writer(name) as w:
            w.write(data)

    def writer(self, name: str) -> ObjectWriter:
        validate_name(name)
        return _SmbWriter(self, name)

    def create_exclusive(self, name: str, data: bytes) -> None:
        unc = self._unc(name)
        f = self._create(name, unc)
        try:
            view = memoryview(data).cast("B")
            while view:
                n = f.write(view)
                view = view[n:]
            f.flush()
            f.close()
        except Exception as exc:
            err = self._map(exc, name)
            try:
                f.close()
            except Exception:
                pass
            if not isinstance(err, TransientTargetError):
                try:
                    _import_smbclient().remove(unc, **self._kw())
                except Exception:
                    pass
            raise err from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        unc = self._unc(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            self.stat(name)          # still NotFound for a missing object
            return b""
        smbclient = _import_smbclient()
        try:
            with smbclient.open_file(unc, mode="rb", buffering=0, share_access="rwd", **self._kw()) as f:
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
            raise self._map(exc, name) from exc

    def stat(self, name: str) -> ObjectInfo:
        unc = self._unc(name)
        st = self._call(name, _import_smbclient().stat, unc)
        if stat_mod.S_ISDIR(st.st_mode):
            raise NotFound(f"{name} is a directory, not an object, on {self.describe()}")
        return ObjectInfo(name, st.st_size)

    def _scan(self, directory: str, want_dirs: bool) -> list[str]:
        unc = self._dir_unc(directory)
        smbclient = _import_smbclient()
        names = []
        try:
            with smbclient.scandir(unc, **self._kw()) as it:
                for entry in it:
                    # entry.smb_info comes with the listing; DirEntry.stat() would reconnect
                    # without our port and credentials
                    is_dir = bool(entry.smb_info.file_attributes & FILE_ATTRIBUTE_DIRECTORY)
                    if is_dir == want_dirs:
                        names.append(entry.name)
        except Exception as exc:
            err = self._map(exc, directory or "the target root")
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
        unc = self._unc(name)
        try:
            self._call(name, _import_smbclient().remove, unc)
        except NotFound:
            pass

    def rmdir(self, name: str) -> None:
        self._call(name, _import_smbclient().rmdir, self._unc(name))

    def free_space(self) -> int | None:
        try:
            vol = self._call("free space", _import_smbclient().stat_volume, self._root)
        except (TransientTargetError, AuthFailed):
            raise
        except TargetUnavailable:
            return None            # the server cannot tell (e.g. not supported)
        return int(vol.caller_available_size)
