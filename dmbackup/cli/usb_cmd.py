"""dmbackup usb list: USB partitions that could be a backup disk."""

import typer

from dmbackup import humanize
from dmbackup.cli.common import emit, examples, handled, load_app, echo

usb_app = typer.Typer(help="USB backup disks.", no_args_is_help=True)


@usb_app.command("list", epilog=examples("USB partitions, which targets they match, enrolled or not",
                                         "dmbackup usb list"))
def usb_list(json_out: bool = typer.Option(False, "--json", help="JSON list.")):
    """List USB partitions with label, UUID, file system and size; mark enrolled ones."""
    with handled():
        a = load_app()
    with handled(a):
        from dmbackup.system import usbdetect
        rows = []
        usb_targets = {n: t for n, t in a.config.targets.items() if t.type == "usb"}
        for d in usbdetect.list_disks():
            r = d.as_dict()
            # which configured targets this disk is; "enrolled": such a target has a repository
            # enrolled here (which disk holds it is checked when it is mounted for a run)
            r["targets"] = sorted(n for n, t in usb_targets.items() if t.matches(d))
            r["enrolled"] = any(a.state.enrolled(n) for n in r["targets"])
            rows.append(r)
        if json_out:
            emit(rows, True)
            return
        if not rows:
            echo("no USB disks found")
            return
        echo(f"{'device':<12} {'label':<16} {'uuid':<38} {'fs':<6} {'size':>10}  target")
        for r in rows:
            mark = (", ".join(r["targets"]) + (" (enrolled)" if r["enrolled"] else " (not enrolled)")
                    if r["targets"] else "-")
            echo(f"{r.get('device', '-'):<12} {r.get('label') or '-':<16} {r.get('uuid') or '-':<38} "
                 f"{r.get('fstype') or '-':<6} {humanize.size(r.get('size')):>10}  {mark}")
