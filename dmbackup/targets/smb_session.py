"""The SMB target's connection: session, timeouts and error mapping (targets/smb.py does objects).

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
import socket
import stat as stat_mod
import struct
import threading

from dmbackup.errors import AuthFailed, ConfigError, NoSpace, NotFound, TargetUnavailable, TransientTargetError
from dmbackup.targets.base import AlreadyExists, validate_name

RECEIVE_TIMEOUT_ENV = "SMB_EXPERIMENTAL_TRANSPORT_RECEIVE_TIMEOUT"

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


def import_smbclient():
    import smbclient

    return smbclient


class SmbSession:
    """One SMB target's connection to ``\\\\server\\share`` and the directory ``path`` in it:
    credentials, the connection cache, and the mapping of every smbprotocol failure."""

    def __init__(self, name: str, *, server: str, share: str, username: str, password_file: str,
                 port: int = 445, path: str = "", encrypt: bool = True, timeout: int = 60):
        self.name = name
        self.server = server
        self.share = share
        self.username = username
        self.password_file = password_file
        self.port = port
        self.path = path
        self.encrypt = encrypt
        self.timeout = timeout
        # half of it per phase: idle -> echo -> no answer -> connection closed (see docstring)
        self.receive_timeout = max(1, math.ceil(timeout / 2))
        self.share_unc = rf"\\{server}\{share}"
        self.root = self.share_unc + ("\\" + path.replace("/", "\\") if path else "")
        self.cache = _ConnectionCache(self.receive_timeout)
        self.known_dirs: set[str] = set()     # directories made this session (saves round trips)
        self._password: str | None = None
        self._opened = False
        self._lock = threading.Lock()

    # -- naming -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"//{self.server}/{self.share}" + (f"/{self.path}" if self.path else "")

    def describe(self) -> str:
        return f"smb target {self.name!r} ({self.url})"

    def unc(self, name: str) -> str:
        validate_name(name)
        return self.root + "\\" + name.replace("/", "\\")

    def dir_unc(self, directory: str) -> str:
        return self.unc(directory) if directory else self.root

    def kw(self) -> dict:
        self._ensure_open()
        return {
            "username": self.username,
            "password": self._password,
            "port": self.port,
            "encrypt": True if self.encrypt else None,   # None: encrypt only if the server asks
            "connection_timeout": self.timeout,
            "connection_cache": self.cache,
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
        smbclient = import_smbclient()
        kw = self.kw()
        try:
            smbclient.register_session(
                self.server, username=self.username, password=self._password, port=self.port,
                encrypt=kw["encrypt"], connection_timeout=self.timeout, connection_cache=self.cache)
            st = smbclient.stat(self.share_unc, **kw)
        except Exception as exc:
            err = self.map(exc, "connecting")
            if isinstance(err, NotFound):
                err = self._share_missing()
            raise err from exc
        if not stat_mod.S_ISDIR(st.st_mode):
            raise self._share_missing()
        if self.path:
            try:
                smbclient.makedirs(self.root, exist_ok=True, **kw)
                st = smbclient.stat(self.root, **kw)
            except Exception as exc:
                raise self.map(exc, f"creating {self.path}") from exc
            if not stat_mod.S_ISDIR(st.st_mode):
                raise TargetUnavailable(f"{self.describe()}: {self.path} exists on the share but is not a directory")

    def close(self) -> None:
        with self._lock:
            if not self._opened:
                return
            self._opened = False
            self._password = None
            self.known_dirs.clear()
        try:
            import_smbclient().reset_connection_cache(fail_on_error=False, connection_cache=self.cache)
        finally:
            _release_receive_timeout(id(self))

    def drop_connections(self) -> None:
        """Forget every connection of this target without a polite log-off.

        Shutting the socket down first wakes a thread blocked in send or recv on it, and makes
        smbclient's reset skip the log-off a dead or silent server would never answer.
        """
        for conn in list(self.cache.values()):
            sock = getattr(getattr(conn, "transport", None), "_sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        try:
            import_smbclient().reset_connection_cache(fail_on_error=False, connection_cache=self.cache)
        except Exception:
            self.cache.clear()
        self.known_dirs.clear()

    # -- errors ---------------------------------------------------------------------------------
    def _share_missing(self) -> TargetUnavailable:
        return TargetUnavailable(
            f"{self.describe()}: share {self.share!r} does not exist on server {self.server}: "
            "check the share name (it is case-insensitive, without slashes)")

    def _silent(self, what: str) -> TransientTargetError:
        return TransientTargetError(
            f"{self.describe()}: no answer from the server within {self.timeout}s ({what}): "
            "it may be hung or overloaded")

    def map(self, exc: BaseException, what: str) -> Exception:
        """Translate an smbprotocol/socket exception into the dmbackup error tree."""
        from smbprotocol import exceptions as smbexc

        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, smbexc.SMBException):
            text = str(exc)
            if "connect" in text.lower() or isinstance(exc.__cause__, OSError):
                self.drop_connections()
                return TargetUnavailable(
                    f"cannot reach //{self.server}/{self.share} (port {self.port}): "
                    f"{text}; check the server name, the port and the firewall")
            return TargetUnavailable(f"{self.describe()}: {what}: {text}")

        status = getattr(exc, "ntstatus", None)
        if status is None and isinstance(exc, smbexc.SMBResponseException):
            status = exc.status

        if status in _AUTH_STATUSES or isinstance(exc, smbexc.SMBAuthenticationError):
            self.drop_connections()
            return AuthFailed(
                f"authentication failed for user {self.username} on //{self.server}/{self.share}: "
                f"check the user name and the password in {self.password_file}")
        if status in _BAD_SHARE_STATUSES:
            self.drop_connections()
            return self._share_missing()
        if status in _NO_SPACE_STATUSES or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"{self.describe()} is full while writing {what}: free space on the share and run again")
        if status in _DENIED_STATUSES:
            return TargetUnavailable(
                f"permission denied on {self.describe()} ({what}): give user {self.username} "
                "read and write access to the share")
        if status in _TRANSIENT_STATUSES:
            self.drop_connections()
            return TransientTargetError(f"{self.describe()}: the server dropped the session ({what})")

        if isinstance(exc, smbexc.SMBOSError):
            if exc.errno == errno.ENOENT:
                return NotFound(f"{what} not found on {self.describe()}")
            if exc.errno == errno.EEXIST:
                return AlreadyExists(f"{what} already exists")
            return TargetUnavailable(f"{self.describe()}: SMB error on {what}: {exc.strerror}")

        if isinstance(exc, smbexc.SMBConnectionClosed):
            self.drop_connections()
            if "timed out" in str(exc).lower():
                return self._silent(what)
            return TransientTargetError(f"{self.describe()}: connection lost ({what})")
        if isinstance(exc, (TimeoutError, socket.timeout, BlockingIOError)):
            self.drop_connections()
            return self._silent(what)
        if isinstance(exc, OSError):
            # BrokenPipeError, ConnectionResetError, ConnectionAbortedError, EPIPE, ...
            self.drop_connections()
            return TransientTargetError(
                f"{self.describe()}: connection lost ({what}): {exc.strerror or type(exc).__name__}")
        if isinstance(exc, smbexc.SMBException):
            text = str(exc)
            if "encryption is required" in text.lower():
                self.drop_connections()
                return TargetUnavailable(
                    f"{self.describe()}: the server does not offer SMB 3 encryption, which this target "
                    f"requires: enable it on the server, or set encrypt = false in [targets.{self.name}]")
            if "timeout" in text.lower():
                self.drop_connections()
                return self._silent(what)
            self.drop_connections()
            return TargetUnavailable(f"{self.describe()}: SMB error on {what}: {text}")
        # spnego and other unexpected failures: never retried, never with arguments shown
        self.drop_connections()
        return TargetUnavailable(f"{self.describe()}: unexpected error on {what}: {type(exc).__name__}")

    def call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **self.kw(), **kwargs)
        except Exception as exc:
            raise self.map(exc, what) from exc
