"""``dmbackup init``: create the repository on a target, or enrol one that exists."""

from __future__ import annotations

from dataclasses import dataclass

from dmbackup.archive import layout
from dmbackup.archive.repository import README_RESTORE, Repository
from dmbackup.config import holds_repository
from dmbackup.engine.result import DictResult
from dmbackup.errors import DmError, UsageError


@dataclass
class InitResult(DictResult):
    """What was created or enrolled (``dmbackup.archive.trust.enrol``'s record), so a person can
    tell it is the right repository: a new machine in a disaster has nothing else to go by."""

    code: int | None = 0            # damage found while enrolling is shown, not an exit code

    def summary(self) -> str:
        res, target = self.data, self.data["target"]
        verb = "created" if res["created"] else "enrolled existing"
        lines = [f"{verb} repository {res['repository']} on target {target} (encryption: {res['encryption']})",
                 f"  created:         {res.get('created_at') or '-'}"]
        newest = res.get("newest_snapshot")
        if not res["created"]:
            lines.append(f"  newest snapshot: {newest['chain']}/{newest['id']} ({newest['kind']}, {newest['time']}), "
                         f"{res.get('snapshots', 0)} in all" if newest else "  newest snapshot: none")
        if res.get("fingerprint"):
            lines.append(f"  key fingerprint: {res['fingerprint']}")
            lines.append("  (note it with the passphrase: on another machine `dmbackup init` shows it again, "
                         "and the same fingerprint means the same key)" if res["created"] else
                         "  (compare it with the fingerprint noted when the backups were set up)")
        if res.get("fingerprint_changed"):
            lines.append("  note: this repository's key changed since this machine last enrolled it")
        if res.get("repaired_repo_json"):
            lines.append("  note: repo.json had been changed on the medium; it was rewritten from the key")
        for d in res.get("damaged") or []:
            lines.append(f"  warning: {d} is damaged: run `dmbackup verify --target {target}`")
        return "\n".join(lines)


def init_repo(app, target_name: str) -> InitResult:
    """Create the repository on a target, or enrol an existing one (after checking the key).

    Either way what this machine must not take from the medium later is recorded
    (dmbackup.archive.trust): mode, key fingerprint, newest snapshot. Enrolling again
    accepts the repository as it is now, an older copy included."""
    if not holds_repository(app.config.target(target_name)):
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
                repo.t.put(layout.README, README_RESTORE.format(hostname=app.config.hostname).encode())
            except DmError as exc:      # a disk mounted read-only for a recovery: enrol anyway
                app.log.warning("repository_not_updated", target=target_name, error=str(exc))
            res = trust.enrol(app, repo, target_name, created=False)
            res["repaired_repo_json"] = was == "mismatch" and repo.meta_mac == "ok"
            app.log.info("repository_enrolled", target=target_name, repository=repo.id,
                         fingerprint=res["fingerprint"], repaired_repo_json=res["repaired_repo_json"])
            return InitResult(data=res)
        repo.create(app.passphrase() if enc else None, enc)
        res = trust.enrol(app, repo, target_name, created=True)
        res["repaired_repo_json"] = False
        app.log.info("repository_created", target=target_name, repository=repo.id,
                     fingerprint=res["fingerprint"])
        return InitResult(data=res)
