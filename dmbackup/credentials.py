"""Where passphrases and passwords come from: a file (mode 0600) or the environment.

Never argv, never logs. Values are returned as bytes and never formatted into messages; the
error messages name the file, not its content.
"""

from __future__ import annotations

import os
import stat

from dmbackup.errors import ConfigError, PassphraseUnavailable

ENV_PASSPHRASE = "DMBACKUP_PASSPHRASE"


def read_secret_file(path: str, what: str) -> bytes:
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what} file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist: create it with mode 0600") from None
    except PermissionError:
        raise ConfigError(f"{what} file {path} is not readable by this user: check its owner and mode") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path} is a directory, not a file") from None
    value = data.rstrip(b"\r\n")
    if not value:
        raise ConfigError(f"{what} file {path} is empty: write the {what} into it")
    return value


def passphrase(config) -> bytes:
    """The repository passphrase for ``config`` (``Config``); file first, then environment."""
    enc = config.encryption
    if enc.passphrase_file:
        return read_secret_file(enc.passphrase_file, "passphrase")
    env = os.environ.get(ENV_PASSPHRASE)
    if env:
        return env.encode("utf-8")
    raise PassphraseUnavailable(
        f"no passphrase: set encryption.passphrase_file in {config.file} (a mode-0600 file) "
        f"or ${ENV_PASSPHRASE}; or set encryption.mode = \"none\" to store unencrypted"
    )
