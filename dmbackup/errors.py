"""One error tree for dmbackup: every expected failure is a DmError subclass.

Each class carries its exit code; the message passed when raising is the one-line text the
administrator sees (what is wrong and what to do). The CLI prints ``str(err)`` and exits with
``err.exit_code``; it never shows a traceback for a DmError. Warnings are not raised: they are
collected by the operation in its result (``dmbackup.engine.result.Result``) and turn a
success into exit 1.

Exit codes (stable, documented in README.md, tested in tests/cli/test_exit_codes.py):
  0 ok · 1 done with warnings · 2 usage or config error · 3 operation failed, nothing
  committed · 4 verify found damage · 5 locked by another run · 6 wrong passphrase or key ·
  7 target unavailable · 70 internal error (a bug: one line on stderr, the traceback in the
  log and in a crash report; never counted as success) · 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_DAMAGE = 4
EXIT_LOCKED = 5
EXIT_KEY = 6
EXIT_TARGET = 7
EXIT_INTERNAL = 70                  # EX_SOFTWARE: an uncaught exception, i.e. a bug
EXIT_INTERRUPTED = 130


class DmError(Exception):
    """Operation failed."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or "error").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- 2: usage and configuration -------------------------------------------------------
class ConfigError(DmError):
    """Configuration error."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        where = ""
        if file and field:
            where = f"{file}: {field}: "
        elif file:
            where = f"{file}: "
        elif field:
            where = f"{field}: "
        super().__init__(where + message)
        self.file = file
        self.field = field


class UsageError(DmError):
    """Usage error."""

    exit_code = EXIT_USAGE


# --- 3: operation failed ----------------------------------------------------------------
class OperationFailed(DmError):
    """The operation failed; nothing was committed."""

    exit_code = EXIT_FAILED


class NoSpace(OperationFailed):
    """Not enough space on the target."""


class SourceError(OperationFailed):
    """The source cannot be read."""


class RestoreError(OperationFailed):
    """Restore failed."""


class HookFailed(OperationFailed):
    """A hook failed."""


class JobTimedOut(OperationFailed):
    """A job run did not finish within its job_timeout and was stopped."""


# --- 4: damage --------------------------------------------------------------------------
class DamageFound(DmError):
    """The repository is damaged."""

    exit_code = EXIT_DAMAGE


class CorruptObject(DamageFound):
    """An object in the repository failed its integrity check."""


# --- 5: locked --------------------------------------------------------------------------
class Locked(DmError):
    """The repository is locked by another run."""

    exit_code = EXIT_LOCKED


# --- 6: key -----------------------------------------------------------------------------
class KeyProblem(DmError):
    """Wrong passphrase or key."""

    exit_code = EXIT_KEY


class WrongPassphrase(KeyProblem):
    """Wrong passphrase: the repository key cannot be unlocked."""


class PassphraseUnavailable(KeyProblem):
    """No passphrase available."""


# --- 7: target unavailable --------------------------------------------------------------
class TargetUnavailable(DmError):
    """The target is unavailable."""

    exit_code = EXIT_TARGET


class NoRepository(TargetUnavailable):
    """No repository on the target."""


class WrongRepository(TargetUnavailable):
    """The target holds a different repository than the one enrolled."""


class NotFound(TargetUnavailable):
    """Object not found on the target."""


class AuthFailed(TargetUnavailable):
    """Authentication with the target failed."""


class TransientTargetError(TargetUnavailable):
    """A transient target error (timeout, dropped connection): worth a retry."""


class TargetHung(TargetUnavailable):
    """A job run was stopped at its job_timeout while waiting on its target."""


class Interrupted(DmError):
    """Interrupted."""

    exit_code = EXIT_INTERRUPTED
