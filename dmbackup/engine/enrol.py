"""``dmbackup init``: create the repository on a target, or enrol one that exists."""

from __future__ import annotations

from dmbackup.archive.repository import README_RESTORE, Repository
from dmbackup.errors import DmError, UsageError


def init_repo(app, target_name: str) -> dict:
    """Create the repository on a target, or enrol an existing one (after checking the key).

    Either way what this machine must not take from the medium later is recorded
    (dmbackup.archive.trust): mode, key fingerprint, newest snapshot. Enrolling again
    accepts the repository as it is now, an older copy included."""
    if not getattr(app.config.target(target_name), "repository", True):
        raise UsageError(f"target {target_name!r} is a {app.config.target(target_name).type} target: it holds no "
                         "repository and needs no init")
    from dmbackup.archive import trust

    enc = app.config.encryption.enabled
    target = app.target(target_name)
    with target:
        repo = Repository(target, app.config.hostname)
        if repo.exists():
            # The mode is the config's; the passphrase must open the key before anything is
            # recorded. A repo.json that lost or fails its MAC is rewritten from the key: the
            # administrator asked for this repository, and the key vouches for it.
            repo.load_meta()
            repo.unlock(app.passphrase, encrypted=enc, check_meta=False)
            was = repo.meta_mac
            try:
                if enc and was != "ok":
                    repo.rewrite_meta()
                # older repositories carry older instructions for whoever holds the disk
                repo.t.put("README-RESTORE.txt", README_RESTORE.format(hostname=app.config.hostname).encode())
            except DmError as exc:      # a disk mounted read-only for a recovery: enrol anyway
                app.log.warning("repository_not_updated", target=target_name, error=str(exc))
            res = trust.enrol(app, repo, target_name, created=False)
            res["repaired_repo_json"] = was == "mismatch" and repo.meta_mac == "ok"
            app.log.info("repository_enrolled", target=target_name, repository=repo.id,
                         fingerprint=res["fingerprint"], repaired_repo_json=res["repaired_repo_json"])
            return res
        repo.create(app.passphrase() if enc else None, enc)
        res = trust.enrol(app, repo, target_name, created=True)
        res["repaired_repo_json"] = False
        app.log.info("repository_created", target=target_name, repository=repo.id,
                     fingerprint=res["fingerprint"])
        return res
