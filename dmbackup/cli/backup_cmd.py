"""dmbackup backup JOB | --target T --what mail|config [--full]."""

from typing import Optional

import typer

from dmbackup import engine
from dmbackup.errors import UsageError
from dmbackup import humanize
from dmbackup.cli.common import complete_job, complete_target, emit, examples, handled, load_app, pick_target, echo

EXAMPLES = examples(
    "Run the job jobs.nightly of the config now (hooks, backup, prune, verify, notify)",
    "dmbackup backup nightly",
    "Start a new chain with a full backup",
    "dmbackup backup nightly --full",
    "A one-off incremental of the mail store to a target",
    "dmbackup backup --target usb1",
    "A config-only bundle (the mailbox target mails it off the box)",
    "dmbackup backup --target offbox --what config",
)


def register(app: typer.Typer) -> None:
    @app.command("backup", epilog=EXAMPLES)
    def backup(
        job: Optional[str] = typer.Argument(None, help="A job from the config ([jobs.NAME]).",
                                            autocompletion=complete_job),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name.",
                                              autocompletion=complete_target),
        what: str = typer.Option("mail", "--what", help="mail or config."),
        full: bool = typer.Option(False, "--full", help="Start a new chain with a full backup."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
        on_plug_device: Optional[str] = typer.Option(
            None, "--on-plug-device", metavar="DEVNAME",
            help="Run the on_plug jobs of the USB disk at DEVNAME (used by the udev rule)."),
    ):
        """Back up the mail store (full or incremental) or the configuration."""
        with handled():
            a = load_app(progress=True, json_out=json_out)
        with handled(a):
            if what not in ("mail", "config"):
                raise UsageError(f"--what must be mail or config, not {what!r}")
            if on_plug_device:
                raise typer.Exit(_on_plug(a, on_plug_device, json_out))
            if job:
                if target:
                    raise UsageError("give either a JOB or --target, not both")
                res = _run_job(a, job, full)
            else:
                from dmbackup.engine import hooks
                tname = pick_target(a, target)
                ctx = hooks.HookContext(action="backup", target=tname, what=what)
                res = None
                with hooks.around(a, ctx):
                    res = engine.backup(a, tname, what=what, full=full)
                    ctx.snapshot = getattr(res, "snapshot_id", None) or (res.get("id") if isinstance(res, dict) else None)
                    ctx.warnings.extend(getattr(res, "warnings", None) or [])
                if res is None:       # a pre hook said 75: skip this run
                    echo(f"backup of {tname} skipped by a pre-backup hook")
                    return
            d = res.as_dict() if hasattr(res, "as_dict") else res
            code = d.get("exit_code", 0)
            if "job" in d:        # a job run: its backup summary is nested
                b = d.get("backup") or {}
                text = (f"job {d['job']}: {d['status']}" + (f", snapshot {d['snapshot_id']}" if d.get("snapshot_id") else "")
                        + (f" ({b.get('files')} files, {humanize.size(b.get('bytes'))}, "
                           f"{humanize.size(b.get('stored_bytes'))} stored)" if b.get("files") is not None else ""))
                if d.get("error"):
                    echo(f"dmbackup: {d['error']}", err=True)
            else:
                text = (f"{d.get('kind', what)} snapshot {d.get('id')} on {d.get('target')}: {d.get('files')} files, "
                        f"{humanize.size(d.get('bytes'))}, {humanize.size(d.get('stored_bytes'))} stored")
                if d.get("duplicate_names_dropped") or d.get("expunged_during_backup"):
                    # a live store under load: what the capture settled, so nobody wonders
                    text += (f"; {d.get('duplicate_names_dropped', 0)} message(s) seen under two names kept once, "
                             f"{d.get('expunged_during_backup', 0)} expunged or moved during the backup left out")
            for w in d.get("warnings", [])[:20]:
                echo(f"warning: {w}", err=True)
            emit(d, json_out, text)
            if code:
                raise typer.Exit(code)


def _on_plug(a, device: str, json_out: bool) -> int:
    """Jobs with on_plug = true whose USB target is this disk; the worst exit code wins."""
    from dmbackup.daemon.jobs import run_job
    from dmbackup.daemon.scheduler import daemon_running
    from dmbackup.targets.usb import on_plug_jobs

    if daemon_running(a.config.state_dir):
        echo(f"the dmbackup daemon is running and handles plug-ins: nothing to do for {device}")
        return 0
    names = on_plug_jobs(a.config, device)
    if not names:
        echo(f"no on_plug job uses the disk at {device}: nothing to do")
        return 0
    worst, out = 0, []
    for name in names:
        d = run_job(a, name, trigger="usb").as_dict()
        out.append(d)
        if d.get("error"):
            echo(f"dmbackup: {d['error']}", err=True)
        worst = max(worst, d.get("exit_code", 0))
    emit(out, json_out, "\n".join(f"job {d['job']}: {d['status']}" for d in out))
    return worst


def _run_job(a, job_name: str, full: bool):
    job = a.config.job(job_name)
    try:
        from dmbackup.daemon.jobs import run_job
    except ImportError:
        return engine.backup(a, job.target, what=job.what, full=full, job=job)
    return run_job(a, job_name, full=full)
