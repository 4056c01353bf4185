"""The dmbackup configuration the benches write: one mail store, one ``dir`` target."""

from __future__ import annotations

import json
import os

MAIN_CF = "myhostname = mx1.example.it\n"


def write_config(path: str, *, store: str, target: str, state: str, etc: str | None = None,
                 target_name: str = "bench", main_cf: str = MAIN_CF) -> str:
    """Write to ``path`` a config backing ``store`` up to the ``dir`` target ``target_name`` at
    ``target``, with ``state`` as its state_dir and, when ``etc`` is given, that directory as
    its one config path (holding a minimal ``postfix/main.cf``); returns ``path``."""
    config_paths = []
    if etc is not None:
        os.makedirs(os.path.join(etc, "postfix"), exist_ok=True)
        with open(os.path.join(etc, "postfix", "main.cf"), "w") as fh:
            fh.write(main_cf)
        config_paths = [etc]
    with open(path, "w") as fh:
        fh.write(f'hostname = "bench"\nstate_dir = {json.dumps(state)}\n\n'
                 f'[source]\nmail_store = {json.dumps(store)}\nconfig_paths = {json.dumps(config_paths)}\n\n'
                 f'[targets.{target_name}]\ntype = "dir"\npath = {json.dumps(target)}\n')
    return path
