"""Opening a repository the way this machine enrolled it, not the way the medium describes it.

``init`` records in ``state_dir`` (``trust.json``, see dmbackup.state) what the medium cannot
be trusted to say about an enrolled repository: the encryption mode (from the config), the
key's fingerprint, whether its ``repo.json`` carries a MAC, and the newest snapshot and config
bundle seen. ``open_trusted`` (the engine's ``open_repository``) unlocks with the mode from
the config, and refuses with exit 7 and what to do: a repository that is not enrolled (for
writers), a mode or key that is not the enrolled one, a ``repo.json`` that changed or lost
its MAC, and (through the ``Watch`` it arms) a repository older than the newest snapshot
seen. Machines enrolled by an older dmbackup have no fingerprint yet: it is recorded at the
first successful unlock (trust on first use) and logged.
"""

from __future__ import annotations

from dmbackup.archive import layout
from dmbackup.archive.repository import Repository
from dmbackup.errors import DmError, WrongRepository


def _mode_words(mode: str | None) -> str:
    return "unencrypted (mode = \"none\")" if mode == "none" else "encrypted"


def _record(app, target_name: str, repo_id: str, **fields) -> dict | None:
    """Update what was seen; a reader without write access to state_dir (a user listing a
    disk) still reads, it only cannot remember."""
    try:
        return app.state.update_trust(target_name, repo_id, **fields)
    except OSError as exc:
        app.log.warning("state_not_written", target=target_name, error=str(exc))
        return None


def _arm(app, repo: Repository, target_name: str, rec: dict, fatal: bool) -> None:
    """Compare every listing with what was seen, and record what is seen or made from now on."""
    w = repo.watch
    w.newest, w.config_newest, w.fatal = rec.get("newest"), rec.get("config_newest"), fatal
    w.on_newest = lambda newest: _record(app, target_name, repo.id, newest=newest)
    w.on_config_newest = lambda name: _record(app, target_name, repo.id, config_newest=name)


def open_trusted(app, target, target_name: str, *, require_enrolled: bool = True) -> Repository:
    """The repository on ``target``, unlocked and checked against this machine's enrolment.

    ``require_enrolled`` (writers: backup, prune) refuses a repository that ``init`` did not
    enrol, and makes a rollback fatal (exit 7) instead of reported damage (readers)."""
    repo = Repository(target, app.config.hostname)
    repo.load_meta()
    enrolled = app.state.enrolled(target_name)
    if require_enrolled and repo.id not in enrolled:
        if enrolled:
            raise WrongRepository(
                f"{target.describe()} holds repository {repo.id[:12]}, not the one enrolled for "
                f"target {target_name!r} ({', '.join(i[:12] for i in enrolled)}): wrong disk or share? "
                f"To use this one as well, run `dmbackup init {target_name}`")
        raise WrongRepository(
            f"repository {repo.id[:12]} on {target.describe()} is not enrolled on this machine: "
            f"run `dmbackup init {target_name}` to enrol it")
    rec = app.state.trust(target_name, repo.id) if repo.id in enrolled else None
    mode = app.config.encryption.mode
    if rec and rec.get("mode") and rec["mode"] != mode:
        raise WrongRepository(
            f"repository {repo.id[:12]} on {target.describe()} was enrolled {_mode_words(rec['mode'])}, "
            f"but the config now says {_mode_words(mode)} (encryption.mode in {app.config.file}): "
            "put the encryption settings back, or start a new repository with `dmbackup init` on an "
            "empty target")
    repo.unlock(app.passphrase, encrypted=app.config.encryption.enabled)
    use_table_cache(app, repo)
    if repo.id not in enrolled:
        return repo                     # a reader on a repository this machine never enrolled
    fp = repo.keys.fingerprint
    if rec and rec.get("fingerprint") and fp != rec["fingerprint"]:
        raise WrongRepository(
            f"the key of repository {repo.id[:12]} on {target.describe()} is not the one enrolled "
            f"(fingerprint {fp}, enrolled {rec['fingerprint']}): someone who knows the passphrase "
            "replaced it. If you re-keyed the repository yourself, run "
            f"`dmbackup init {target_name}` to enrol the new key")
    if repo.meta_mac == "absent" and rec and rec.get("mac"):
        raise WrongRepository(
            f"repo.json on {target.describe()} has lost its MAC since this machine enrolled it: "
            f"someone edited the disk. Run `dmbackup verify --target {target_name} --read-data`, "
            f"then `dmbackup init {target_name}` to rewrite repo.json from the key")
    updates: dict = {}
    if not rec or not rec.get("mode"):
        updates["mode"] = mode
    if fp and (not rec or not rec.get("fingerprint")):
        updates["fingerprint"] = fp
        app.log.warning("trust_on_first_use", target=target_name, repository=repo.id, fingerprint=fp,
                        message=f"repository {repo.id[:12]} was enrolled by an older dmbackup: its key "
                                f"fingerprint {fp} is recorded now and checked from now on")
    if repo.meta_mac == "absent" and require_enrolled and repo.keys.encrypted:
        try:                            # a repository from before repo.json had a MAC
            repo.rewrite_meta()
        except DmError as exc:          # a read-only medium: try again next time
            app.log.warning("repo_json_not_upgraded", target=target_name, error=str(exc))
    if repo.meta_mac == "ok" and not (rec or {}).get("mac"):
        updates["mac"] = True
    if updates:
        rec = _record(app, target_name, repo.id, **updates) or {**(rec or {}), **updates}
    _arm(app, repo, target_name, rec or {}, fatal=require_enrolled)
    return repo


def use_table_cache(app, repo: Repository) -> None:
    """Let the repository's catalog reader keep parsed catalogs in state_dir
    (dmbackup.archive.tablecache); a machine without a state_dir reads them as before."""
    state = getattr(app, "state", None)
    if state is not None and getattr(state, "dir", None):
        from dmbackup.archive.tablecache import TableCache

        repo.use_table_cache(TableCache(state.dir, repo.id))


def enrol(app, repo: Repository, target_name: str, *, created: bool) -> dict:
    """Record an (opened, unlocked) repository as enrolled for ``target_name``; forget what
    was seen before (``init`` on an older copy is how an administrator accepts it). Returns
    what ``init`` shows: id, creation time, newest snapshot, key fingerprint."""
    snaps = repo.snapshots()
    newest = snaps[-1] if snaps else None
    old = app.state.trust(target_name, repo.id) or {}
    rec = {"mode": app.config.encryption.mode, "fingerprint": repo.keys.fingerprint,
           "created": repo.meta.get("created"), "mac": repo.meta_mac == "ok",
           "newest": ({"chain": newest.chain, "seq": newest.header.seq, "id": newest.id,
                       "time": newest.header.time} if newest else None)}
    committed = {x.id for x in snaps} | {b for _, b, _ in repo.damaged}
    bundles = [n for n in repo.bundle_ids() if layout.parse_id_time(n) is not None
               and (layout.is_config_only(n) or n in committed)]
    rec["config_newest"] = max(bundles, key=lambda n: (layout.id_time(n), n)) if bundles else None
    app.state.enrol(target_name, repo.id)
    app.state.set_trust(target_name, repo.id, rec)
    return {
        "target": target_name, "repository": repo.id, "created": created, "enrolled": True,
        "encryption": "aes-256-gcm" if repo.keys.encrypted else "none",
        "created_at": repo.meta.get("created"), "fingerprint": rec["fingerprint"],
        "fingerprint_changed": bool(old.get("fingerprint") and old["fingerprint"] != rec["fingerprint"]),
        "snapshots": len(snaps), "damaged": [f"{c}/{s}" for c, s, _ in repo.damaged],
        "newest_snapshot": ({"id": newest.id, "chain": newest.chain, "kind": newest.header.kind,
                             "time": newest.header.time} if newest else None),
    }
