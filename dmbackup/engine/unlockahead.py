"""Start the repository key's derivation before the code that unlocks it is loaded (issue 17).

``derive_ahead(app, target)``, with the target open: the key file is read and scrypt started in
a thread (dmbackup.archive.kdf: best effort and silent; the unlock that follows makes every
check and reports every problem), so the archive code loads beside it. Used by a backup and
by ``snapshots`` (hence ``status``). Imports nothing heavy.
"""

from __future__ import annotations


def derive_ahead(app, target) -> None:
    if app.config.encryption.enabled:
        from dmbackup.archive import kdf, layout

        kdf.derive_ahead_from(target, f"{layout.repo_root(app.config.hostname)}/{layout.KEY_FILE}", app.passphrase)
