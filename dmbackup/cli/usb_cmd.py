"""dmbackup usb list: USB partitions that could be a backup disk."""

import typer

from .common import emit, handled, human_bytes, load_app, echo

usb_app = typer.Typer(help="USB backup disks.", no_args_is_help=True)


@usb_app.command("list")
def usb_list(json_out: bool = typer.Option(False, "--json", help="JSON list.")):
    """List USB partitions with label, UUID, file system and size; mark enrolled ones."""
    with handled():
        a = load_app()
    with handled(a):
        from ..usb import detect

        disks = detect.list_disks() if hasattr(detect, "list_disks") else detect.list_usb()
        rows = [d.as_dict() if hasattr(d, "as_dict") else dict(d.__dict__) for d in disks]
        if json_out:
            emit(rows, True)
            return
        if not rows:
            echo("no USB disks found")
        for r in rows:
            echo(f"{r.get('device', '-'):<12} {r.get('label') or '-':<16} {r.get('uuid') or '-':<38} "
                       f"{r.get('fstype') or '-':<6} {human_bytes(r.get('size'))}")
