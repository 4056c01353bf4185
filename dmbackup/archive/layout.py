"""Where everything lives in a repository, what it is called, and what each sealed object is bound to.

Every object name the engine writes or reads and every AAD string it seals with is built
here, so the format has one spelling (the prose of the format is in dmbackup/archive/__init__.py).

Names
    repo.json, README-RESTORE.txt                 at the top
    locks/lock                                    the one writer's lock
    keys/master.json                              the master key, sealed with the passphrase
    chains/<chain>/                               one full snapshot and its incrementals
        <snap>.v0001, .v0002 ...                  volumes: sealed blocks of file data
        <snap>.pages                              page tables of the snapshot's catalog rows
        <snap>.index                              the content index (dedup across the chain)
        <snap>.hidx                               the header index (``find``; optional, added later by ``reindex``)
        <snap>.catalog                            the commit point: a snapshot exists when this does
    config/<snap>.bundle                          the config bundle a mail snapshot carries
    config/<time>-config.bundle                   a config-only backup

    <chain> = NNNN-YYYYMMDDTHHMMSSZ (chain number, time of its full snapshot)
    <snap>  = YYYYMMDDTHHMMSSZ-full | YYYYMMDDTHHMMSSZ-inc (UTC time of the snapshot)

AAD (additional authenticated data): each sealed object is bound to its repository and to its
place, so a block, page, catalog or bundle copied or moved to another place fails to open:
    "<repo id>|blk|<chain>|<volume>|<offset>"     a block at <offset> of a volume
    "<repo id>|page|<chain>|<owner snap>|<offset>" a page in <owner snap>.pages
    "<repo id>|cat-head|<chain>|<snap>"            a catalog's header
    "<repo id>|cat-body|<chain>|<snap>"            a catalog's body
    "<repo id>|index|<chain>|<snap>"               a content index
    "<repo id>|hidx|<chain>|<snap>"                a header index
    "<repo id>|bundle|<snap>"                      a config bundle (<snap> as in its name)
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

CHAINS = "chains"
BUNDLES = "config"
KEYS = "keys"
LOCKS = "locks"
REPO_JSON = "repo.json"
README = "README-RESTORE.txt"
KEY_FILE = f"{KEYS}/master.json"
LOCK = f"{LOCKS}/lock"

# names read from a medium: \Z, not $ (which also accepts a trailing newline)
CHAIN_RE = re.compile(r"^(\d{4})-(\d{8}T\d{6}Z)\Z")
SNAP_RE = re.compile(r"^(\d{8}T\d{6}Z)-(full|inc)\Z")
VOLUME_RE = re.compile(r"^\d{8}T\d{6}Z-(full|inc)\.v\d{4}\Z")
OBJECT_RE = re.compile(r"^\d{8}T\d{6}Z-(full|inc)\.(v\d{4}|pages|index)\Z")
SNAP_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


# --- ids and times ------------------------------------------------------------------------

def repo_root(hostname: str) -> str:
    """Where a host's repository lives on a target."""
    return f"dmbackup/{hostname}"


def snap_time(t: datetime) -> str:
    """``20261128T023000Z``: the time part of snapshot, chain and bundle names (t in UTC)."""
    return t.strftime(SNAP_TIME_FORMAT)


def snapshot_id(time: str, kind: str) -> str:
    """``<time>-full`` or ``<time>-inc`` (kind "full"/"incremental"/"inc")."""
    return f"{time}-{'full' if kind == 'full' else 'inc'}"


def chain_id(number: int, time: str) -> str:
    return f"{number:04d}-{time}"


def config_only_id(time: str) -> str:
    return f"{time}-config"


def is_config_only(snap: str) -> bool:
    """Whether a bundle id is a config-only backup's (``<time>-config``), not a mail snapshot's."""
    return snap.endswith("-config")


def id_time(snap: str) -> str:
    """The time part of a snapshot or bundle id (``20261128T023000Z``): ids sort by it."""
    return snap[:16]


def parse_id_time(snap: str) -> datetime | None:
    """The UTC time a snapshot or bundle id names, None if it names none."""
    try:
        return datetime.strptime(snap.split("-", 1)[0], SNAP_TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def chain_number(chain: str) -> int:
    return int(chain[:4])


# --- object names -------------------------------------------------------------------------

def chain_dir(chain: str) -> str:
    return f"{CHAINS}/{chain}"


def chain_object(chain: str, name: str) -> str:
    """A file in a chain's directory, by its base name (a volume, pages, index or catalog)."""
    return f"{CHAINS}/{chain}/{name}"


def catalog(chain: str, snap: str) -> str:
    return chain_object(chain, catalog_name(snap))


def pages(chain: str, snap: str) -> str:
    return chain_object(chain, pages_name(snap))


def index(chain: str, snap: str) -> str:
    return chain_object(chain, index_name(snap))


def catalog_name(snap: str) -> str:
    """Base names in a chain's directory (as a catalog header records them): ``<snap>.catalog``."""
    return f"{snap}.catalog"


def pages_name(snap: str) -> str:
    return f"{snap}.pages"


def index_name(snap: str) -> str:
    return f"{snap}.index"


def volume_name(snap: str, number: int) -> str:
    """The base name of a snapshot's n-th volume (see ``chain_object`` for the full name)."""
    return f"{snap}.v{number:04d}"


def object_owner(name: str) -> str:
    """The snapshot a chain entry (base name: volume, pages, index, catalog) belongs to."""
    return name.split(".", 1)[0]


def is_data_object(name: str) -> bool:
    """A volume (as opposed to a snapshot's pages, index, catalog...), by base name."""
    return bool(VOLUME_RE.match(name))


def bundle(snap: str) -> str:
    """``config/<snap>.bundle``: a mail snapshot's bundle, or a config-only one (``<time>-config``)."""
    return f"{BUNDLES}/{bundle_name(snap)}"


def bundle_name(snap: str) -> str:
    """The base name of a bundle in ``config/``."""
    return f"{snap}.bundle"


def bundle_id(name: str) -> str | None:
    """The snapshot id of a ``config/`` entry (full name or base name), None if not a bundle."""
    base = name.rsplit("/", 1)[-1]
    return base[: -len(".bundle")] if base.endswith(".bundle") else None


def catalog_id(name: str) -> str | None:
    """The snapshot id of a chain entry that is a catalog, None otherwise."""
    base = name.rsplit("/", 1)[-1]
    return base[: -len(".catalog")] if base.endswith(".catalog") else None


# --- AAD ----------------------------------------------------------------------------------

def block_aad(repo_id: str, chain: str, volume: str, offset: int) -> bytes:
    return f"{repo_id}|blk|{chain}|{volume}|{offset}".encode()


def page_aad(repo_id: str, chain: str, owner: str, offset: int) -> bytes:
    return f"{repo_id}|page|{chain}|{owner}|{offset}".encode()


def head_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|cat-head|{chain}|{snap}".encode()


def body_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|cat-body|{chain}|{snap}".encode()


def index_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|index|{chain}|{snap}".encode()


def bundle_aad(repo_id: str, snap: str) -> bytes:
    return f"{repo_id}|bundle|{snap}".encode()


# --- the header index (``find``): one optional object per snapshot, not listed in its catalog

HIDX_SUFFIX = ".hidx"


def hidx_name(snap: str) -> str:
    """``<snap>.hidx``: base name of a snapshot's header index in its chain's directory."""
    return f"{snap}{HIDX_SUFFIX}"


def hidx(chain: str, snap: str) -> str:
    return chain_object(chain, hidx_name(snap))


def hidx_aad(repo_id: str, chain: str, snap: str) -> bytes:
    return f"{repo_id}|hidx|{chain}|{snap}".encode()


def hidx_frame_aad(repo_id: str, chain: str, snap: str, n: int, last: bool) -> bytes:
    """A frame of a version 2 header index: its place, and whether it is the last one."""
    return f"{repo_id}|hidx|{chain}|{snap}|{n}|{'last' if last else 'more'}".encode()
