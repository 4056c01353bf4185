"""dmbackup usb list: USB partitions that could be a backup disk."""

import typer

from dmbackup.cli.common import examples, handled, load_app, show

usb_app = typer.Typer(help="USB backup disks.", no_args_is_help=True, rich_markup_mode=None)


@usb_app.command("list", epilog=examples("USB partitions, which targets they match, enrolled or not",
                                         "dmbackup usb list"))
def usb_list(json_out: bool = typer.Option(False, "--json", help="JSON list.")):
    """List USB partitions with label, UUID, file system and size; mark enrolled ones."""
    with handled():
        a = load_app()
    with handled(a):
        from dmbackup.daemon import plug

        show(plug.usb_disks(a), json_out)
