"""The repository format, in prose. Code in this package implements exactly this.

Every name and AAD below is spelled once, in dmbackup.archive.layout.

Layout on a target (``<target root>/dmbackup/<hostname>/``)::

    repo.json                      format version, repository id, creation time, encryption, MAC
    keys/master.json               master key wrapped by the passphrase (see dmbackup.archive.crypto)
    README-RESTORE.txt             plain words for the person holding the disk
    locks/lock                     the one writer: host, PID, boot id, start time (JSON)
    chains/<chain>/                a full snapshot and its incrementals: the unit of retention
        <snap>.v0001 ...           data volumes: sealed blocks of file content
        <snap>.pages               sealed directory pages written by this snapshot (if any)
        <snap>.index               content index of what this snapshot stored (if any)
        <snap>.hidx                header index of the messages this snapshot stored (see below)
        <snap>.catalog             written LAST; its presence is what makes the snapshot exist
    config/<snap>.bundle           the config bundle a mail snapshot carries (see dmbackup.archive.bundle)
    config/<time>-config.bundle    a config-only backup

repo.json. ``{"format": 1, "id": 32 hex digits, "created": ISO time, "hostname": ...,
"encryption": "aes-256-gcm" | "none", "mac": hex}``. ``mac`` is HMAC-SHA256 under a key
derived from the master key (HKDF purpose "repo-json") over the canonical JSON (sorted keys,
no spaces) of the other fields; it is checked once the key is open, and a mismatch stops
every command but ``init`` (exit 7; ``init`` rewrites repo.json from the key). Repositories
made before the MAC existed have no ``mac``: dmbackup adds it at their next backup, and a
machine that has seen it refuses a repo.json without it. The field was added without a
format bump: readers of format 1 that do not know it ignore it, and it tightens nothing they
relied on. ``encryption`` is written for people and never read: the mode comes from the
config (``encryption.mode``) and from what ``init`` recorded in ``state_dir`` together with
the key's fingerprint (``dmbackup.archive.trust``), because anyone holding the medium can
edit repo.json. An unencrypted repository (mode "none") has no key, hence no MAC and no
authenticity at all: its SHA-256 seals catch accidents, not forgery (docs/threat-model.md).

Reading the medium. Nothing read from a target is believed before it is authenticated and
bounded: repo.json, the key file and the lock are read with a 64 KiB cap; a catalog header
may be at most 16 MiB and a whole catalog 256 MiB; a page, index or block is read at the
offset and length an authenticated catalog recorded (an extent's sealed length at most one
compressed 4 MiB block); zstd frames are inflated under a hard cap (and at most 256 times
their size past 64 MiB), a frame that declares a larger size is refused before anything is
allocated; the key file's scrypt cost may not exceed the largest dmbackup ever wrote (N=2^16,
r=8, p=1). On a ``dir`` target (and the USB and NFS-mount targets built on it) names are
resolved beneath the target root without following links or crossing file systems, and only
regular files are read. Each violation is damage (exit 4).

Names. A chain is ``NNNN-<time of its full>`` (NNNN counts chains, so order never depends on
the clock); a snapshot is ``<UTC time YYYYMMDDTHHMMSSZ>-full|inc`` and is unique in the
repository. Every object is written under a temporary name (``.tmp-XXXX`` suffix) and renamed
when complete; the next writer deletes temporary names and volumes/pages of snapshots that
have no catalog (an interrupted run). Nothing is ever rewritten in place.

Blocks and volumes. File content is cut into *blocks* of up to 4 MiB of plaintext; small
files are grouped into one block (so they compress together, as in tar | zstd), a large file
spans several blocks. A block is never shared between two mailboxes (the writer flushes when
the top-level ``<domain>/<user>`` changes), so restoring one mailbox reads only its blocks.
Each block is compressed with zstd and sealed (AES-256-GCM; in an unencrypted repository a
SHA-256) with the associated data ``repo id | "blk" | chain | volume name | offset``: a block
copied or swapped to another place fails to open. In a volume each block is framed as
``u32 length (little endian) | sealed bytes``, so a volume can be walked without a catalog.
A volume is closed before it would exceed the volume size (never 4 GiB: FAT32).

Entries and pages. The tree is stored directory by directory: a *page* is the JSON list of
entries of one directory, sorted by name. An entry is
``[name, type, mode, uid, gid, mtime_ns, size, ino, sha256-hex|null, extents|link target]``,
type ``f`` (file), ``d`` (directory) or ``l`` (symlink); extents are
``[volume, volume offset, sealed length, offset in block, length]``. Names are file-system
names decoded with surrogateescape, so any byte string round-trips. A stored page is
serialized canonically, zstd-compressed and sealed (AD ``repo id | "page" | chain | owner |
offset``) into ``<owner snapshot>.pages``.

Page table. The catalog maps every directory to a row
``[dir, owner, offset, length, page hash (128-bit hex), entries, delta|null]``: the directory's
entries are the stored page at (owner, offset, length) with the row's inline *delta* applied.
A delta (``{"del": [names], "ren": [[old name, new suffix, new mtime|null]], "put":
[entries]}``) lists the changes since that stored page; ``ren`` is a Maildir flag rename,
written as the part of the new name after the base name. An incremental keeps the parent's
row when a directory is unchanged, extends the cumulative delta while it stays under a quarter
of the directory (at least 16 changes), and stores a fresh page otherwise. The table itself is
stored in full (``{"pages": rows}``) or, in an incremental, as changes to its parent's table
(``{"base": parent id, "depth": n, "changed": rows, "removed": dirs}``); a full table is
written again after 7 levels (a reader resolves the tables back to the last full one; before
2026-12-02, 30) or when most rows changed. So a night of flag renames costs a few dozen bytes
per renamed message, not a rewrite of the catalog.

Catalog. ``<snap>.catalog`` is ``b"DMCAT1\n" | u32 header length | sealed header |
sealed body``. The header (JSON, AD ``repo id | "cat-head" | chain | snap``) holds id, chain,
seq (0 for the full), parent, kind, what, time, hostname, counts (files, dirs, bytes, stored
bytes), the root directory's metadata, the volumes, pages and index objects this snapshot
wrote with their sizes and SHA-256, and the config bundle it carries. The body (zstd JSON,
AD ``... "cat-body" ...``) holds the page table and the snapshot's warnings. Listing
snapshots reads only headers. (A machine may keep the parsed body of a catalog in its
state_dir, dmbackup.archive.tablecache, used only for the very sealed bytes it was parsed
from; nothing of it is on the medium.)

Content index. ``<snap>.index`` (sealed zstd JSON, AD ``... "index" ...``) maps the first
128 bits (hex) of the SHA-256 of each content this snapshot stored to its extents. It is
read only by a later incremental that meets a file it cannot match by name (a message moved
to another folder), never by a restore.

Header index. ``<snap>.hidx`` (optional) holds, for each message whose content the snapshot
stored (new to its chain), its Message-ID, Date, From, To, Cc, Subject (decoded to text), size
and whether it seems to carry attachments, keyed by the first 128 bits of the content's SHA-256
(so a catalog entry's ``sha256-hex`` finds its record). The plaintext is the record codec of
dmbackup.archive.headerindex (magic ``DMHIX``, version 1, chunks of at most 4096 records stored
column by column). Version 2 objects (written since 2026-12-01) begin with the 8 bytes
``DMHIDX\x02\n`` and hold that plaintext in frames, each ``u32 LE length | sealed``: a frame
is whole chunks (the first opens with the codec's magic, the last ends with its end marker),
about 2 MiB of plaintext, zstd-compressed (level 3) and sealed with the catalog key, AD ``repo
id | "hidx" | chain | snap | n | "more"`` or ``... | n | "last"`` for the final frame; so a
backup writes its index as it goes (a million messages are 185 MB of plaintext it never
holds), and a frame dropped, moved, added or cut off does not open. Version 1 objects (any
other beginning) are the whole plaintext zstd-compressed (level 9) and sealed, AD ``repo id |
"hidx" | chain | snap``; both are read. Either way the medium learns no header and an index
copied to another snapshot fails to open. Every backup writes one before its catalog (even an
empty one; the block workers extract the headers of a full backup's messages while they hash
them). It is not listed in the catalog header: catalogs are immutable and ``reindex`` adds
indexes to snapshots made before they existed, by reading the first block of each message
the snapshot stored (entries whose extents lie in its own volumes). Its absence means "not
indexed". It is written under a temporary name and renamed, never replaced; it belongs to
its snapshot like the snapshot's other objects (a leftover of a snapshot without a catalog is deleted by the next writer,
``prune`` deletes it with its chain). A reader takes at most 256 MiB of it and inflates at most
1 GiB; an index that does not open or decode is damage, which ``find`` reports and treats as
"not indexed". Only ``find``, ``ls``, ``diff --long`` and restore by message read it, never a
restore of a tree.

Incrementals. An incremental lists the whole tree of its moment (deleted files are simply
absent) but stores only content that is new to the chain: an unchanged file (same size and
mtime; for Maildir messages matched by folder and base name, so a flag rename or a new/ ->
cur/ move counts as unchanged) reuses its parent's extents without being read; a file with
new metadata but known content (a move between folders) is read, hashed, found in the chain's
content index and not stored again. Full backups compress at zstd level 3 (the speed of
tar | zstd); incrementals, which are small, at level 9.
"""

FORMAT_VERSION = 1
BLOCK_SIZE = 4 << 20
CATALOG_MAGIC = b"DMCAT1\n"
