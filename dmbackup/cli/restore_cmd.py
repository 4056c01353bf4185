"""dmbackup restore --target T [SNAPSHOT | --at TIME] [--what] [--mailbox] [--folder] [--to DIR]
[--overwrite] [--resume] [--uid-gap N]; dmbackup restore --resync."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.errors import UsageError
from dmbackup import humanize
from dmbackup.cli.common import complete_target, emit, examples, handled, load_app, pick_target, echo

EXAMPLES = examples(
    "Disaster, the whole newest snapshot into an empty directory (then move it into place)",
    "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000",
    "The same, as it was at a time (UTC)",
    "dmbackup restore --target usb1 --at 2026-11-27T23:00 --to /var/vmail.new --uid-gap 1000",
    "After the restored store is in place and Dovecot runs on it",
    "dmbackup restore --resync",
    "Disaster, straight into the empty live store served by Dovecot",
    "dmbackup restore --target usb1 --overwrite",
    "Finish a restore that died half way (disk full, power cut)",
    "dmbackup restore --target usb1 --to /var/vmail.new --uid-gap 1000 --resume",
    "One mailbox into a directory",
    "dmbackup restore --target usb1 --mailbox anna@example.it --to /tmp/anna",
    "One folder into a directory",
    "dmbackup restore --target usb1 --mailbox anna@example.it --folder Archivio/2024 --to /tmp/a",
    "One mailbox into the live server (new folders Restored-DATE/..., nothing live touched)",
    "dmbackup restore --target usb1 --mailbox anna@example.it --at 2026-11-27T23:00",
    "The configuration: preflight, then apply",
    "dmbackup restore --target offbox --what config; dmbackup restore --target offbox --what config --overwrite",
)


def register(app: typer.Typer) -> None:
    @app.command("restore", epilog=EXAMPLES)
    def restore(
        snapshot: Optional[str] = typer.Argument(None, help="Snapshot id (default: the newest)."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
        at: Optional[str] = typer.Option(None, "--at", help="Newest snapshot at or before TIME (ISO 8601, UTC)."),
        what: str = typer.Option("mail", "--what", help="mail or config."),
        mailbox: Optional[str] = typer.Option(None, "--mailbox", help="Only this mailbox (USER@DOMAIN)."),
        folder: Optional[str] = typer.Option(None, "--folder", help="Only this IMAP folder of --mailbox."),
        to: Optional[str] = typer.Option(None, "--to", help="Restore into this (empty) directory."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Allow writing over existing files."),
        resume: bool = typer.Option(False, "--resume", help="Finish an interrupted restore into the same --to DIR "
                                    "(or store): complete files are kept."),
        uid_gap: Optional[int] = typer.Option(None, "--uid-gap", help="Raise every folder's next UID by N (default "
                                              "1000 for --overwrite or --to the mail store, else 0)."),
        resync: bool = typer.Option(False, "--resync", help="After a store restored with --to was moved into place "
                                    "and Dovecot started: resync it and raise mod-sequences for clients."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ):
        """Restore a snapshot, a mailbox or a folder."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            if snapshot and at:
                raise UsageError("give either SNAPSHOT or --at, not both")
            if what not in ("mail", "config"):
                raise UsageError(f"--what must be mail or config, not {what!r}")
            if resync:
                if snapshot or at or to or overwrite or resume or mailbox or folder or uid_gap is not None:
                    raise UsageError("--resync takes no other restore option: it finishes a store that is already "
                                     "in place and served by Dovecot")
                d = engine.resync(a)
                for w in d.get("warnings", []):
                    echo(f"warning: {w}", err=True)
                emit(d, json_out, f"resynced; {d.get('folders')} folder(s) now at HIGHESTMODSEQ "
                                  f"{d.get('highest_modseq')}, every message's mod-sequence raised")
                if d.get("exit_code", 0):
                    raise typer.Exit(d["exit_code"])
                return
            from dmbackup.engine import hooks
            tname = pick_target(a, target)
            ctx = hooks.HookContext(action="restore", target=tname, what=what)
            res = None
            with hooks.around(a, ctx):
                res = engine.restore(a, tname, snapshot, at=at, what=what, mailbox=mailbox,
                                     folder=folder, to=to, overwrite=overwrite, resume=resume, uid_gap=uid_gap)
                ctx.snapshot = getattr(res, "snapshot_id", None) or (res.get("snapshot") if isinstance(res, dict) else None)
            if res is None:
                echo(f"restore from {tname} skipped by a pre-restore hook")
                return
            d = res.as_dict() if hasattr(res, "as_dict") else res
            for w in d.get("warnings", [])[:20]:
                echo(f"warning: {w}", err=True)
            failed = d.get("failed") or []
            if what == "config" and not to:
                text = _preflight_text(d)
            else:
                text = (f"restored {d.get('files')} files ({humanize.size(d.get('bytes'))}) from "
                        f"{d.get('snapshot')} into {d.get('destination')}")
                if d.get("skipped_complete"):
                    text += f"; {d['skipped_complete']} already complete (--resume)"
                if failed:
                    text += f"\nNOT restored ({d['failed_count']}):" + "".join(
                        f"\n  {f.get('path')}: {f.get('error')}" for f in failed[:200])
            emit(d, json_out, text)
            if failed:
                n, first = d["failed_count"], failed[0]
                why = ("damaged or unsafe in the backup: run `dmbackup verify --read-data` and restore them from "
                       "another snapshot" if d.get("exit_code") == 4 else
                       "they could not be written: fix the destination and run the same restore with --resume")
                echo(f"dmbackup: restore incomplete: {n} entr{'y' if n == 1 else 'ies'} not restored (first: "
                     f"{first.get('path')}: {first.get('error')}), everything else was restored; {why}", err=True)
                raise typer.Exit(d["exit_code"])
            if d.get("exit_code", 0):
                raise typer.Exit(d["exit_code"])


def _preflight_text(d: dict) -> str:
    """A config restore into the live system: what would change, and whether it was applied."""
    lines = []
    for c in (d.get("changes") or [])[:200]:
        if isinstance(c, dict) and c.get("action") != "unchanged":
            lines.append(f"  {c.get('action', '?'):<9} {c.get('path', '?')}")
    counts = d.get("counts") or {}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    head = (f"applied config bundle {d.get('snapshot')}: {summary or 'nothing to change'}" if d.get("applied")
            else f"preflight of config bundle {d.get('snapshot')}: {summary or 'nothing to change'}; "
                 "nothing written (add --overwrite to apply; replaced files are kept as <file>.dmbackup-<time>)")
    return "\n".join([head] + lines)
