"""dmbackup init TARGET: create (or enrol) the repository on a target, and show what it is."""

import typer

from dmbackup import engine
from dmbackup.cli.common import complete_target, emit, examples, handled, load_app

EXAMPLES = examples(
    "Create the repository on a new disk, or enrol a disk after a disaster",
    "dmbackup init usb1",
)


def register(app: typer.Typer) -> None:
    @app.command("init", epilog=EXAMPLES)
    def init(target: str = typer.Argument(..., help="Target name from the config.",
                                           autocompletion=complete_target),
             json_out: bool = typer.Option(False, "--json", help="Print a JSON summary.")):
        """Create the repository on TARGET (or enrol an existing one on this machine)."""
        with handled():
            a = load_app()
        with handled(a):
            res = engine.init_repo(a, target)
            emit(res, json_out, _text(res, target))


def _text(res: dict, target: str) -> str:
    """What was enrolled, so a person can tell it is the right repository (a new machine in a
    disaster has nothing else to go by): id, creation time, newest snapshot, key fingerprint."""
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
