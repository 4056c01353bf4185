"""Micro-benchmark of dmbackup.archive.headerindex on bench-corpus messages (in memory).

Builds N messages with the benchmark corpus's own MessageFactory (the headers Postfix +
Dovecot LMTP leave: Received x2, DKIM-Signature, Authentication-Results ..., 8% RFC 2047
subjects, 5% attachments), then measures

* ``extract`` in microseconds per message (best of R rounds over all N), next to the
  standard library's ``BytesHeaderParser`` (headers only) as a yardstick;
* ``IndexWriter.add`` and ``decode`` per record;
* the index size per record, plain and zstd-compressed (levels 3 and 9, as the caller
  compresses), with 16-byte random keys (a content-hash prefix: the worst case for zstd),
  and as a share of the same messages' bytes compressed in 4 MiB groups at zstd level 3
  (roughly what a backup stores for them).

    python3 -m bench.headerindex_speed [--messages 20000] [--rounds 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import zstandard

from bench.corpus import EPOCH_NOW, MessageFactory, Params, pools
from dmbackup.archive.headerindex import IndexWriter, decode
from dmbackup.archive.headerparse import extract


def messages(n: int, seed: int) -> list[bytes]:
    p = Params(seed=seed)
    pl = pools(seed)
    out: list[bytes] = []
    users = max(1, n // 1000)
    for u in range(users):
        rng = random.Random(f"hx:{seed}:{u}")
        fac = MessageFactory(p, pl, rng, f"utente{u}@studio-rossi.it", f"Utente {u}")
        t = EPOCH_NOW - 300 * 86400
        for k in range(n // users):
            t += rng.randint(60, 3 * 86400 // 10)
            out.append(fac.message(t, rng.random() < 0.25, rng.random() < p.attach_rate))
    return out


def best(fn, rounds: int) -> float:
    """Least CPU time (user + system of this process) of ``rounds`` runs: steadier than wall
    time on a machine shared with other jobs."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    msgs = messages(a.messages, a.seed)
    heads = [m[:65536] for m in msgs]        # what a block worker would hand over
    n = len(msgs)
    total = sum(len(m) for m in msgs)
    print(f"{n} messages, {total / 1e6:.1f} MB (mean {total / n / 1000:.1f} KB, "
          f"median {sorted(map(len, msgs))[n // 2] / 1000:.1f} KB), built in {time.perf_counter() - t0:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f}")
    hdr_bytes = sorted(m.find(b"\n\n") + 1 for m in msgs)
    print(f"header block: median {hdr_bytes[n // 2]} B, p95 {hdr_bytes[int(n * 0.95)]} B")

    results = [None] * n

    def run_extract():
        for i, h in enumerate(heads):
            results[i] = extract(h)

    s = best(run_extract, a.rounds)
    print(f"extract: {s / n * 1e6:.2f} us/message (CPU time, best of {a.rounds})")
    none = sum(r is None for r in results)
    att = sum(bool(r and r.attachments) for r in results)
    print(f"  not a header block: {none}; with attachments: {att} ({att / n:.1%}); "
          f"with a date: {sum(bool(r and r.date) for r in results)}")

    from email.parser import BytesHeaderParser
    bp = BytesHeaderParser()
    sample = heads[: min(n, 5000)]

    def run_stdlib():
        for h in sample:
            m = bp.parsebytes(h)
            for k in ("Message-ID", "Date", "From", "To", "Cc", "Subject"):
                m.get(k)

    s2 = best(run_stdlib, max(1, a.rounds // 2))
    print(f"stdlib BytesHeaderParser + 6 gets (yardstick): {s2 / len(sample) * 1e6:.1f} us/message")

    rng = random.Random(a.seed)
    keys = [rng.randbytes(16) for _ in range(n)]

    def run_add():
        w = IndexWriter()
        for k, m, r in zip(keys, msgs, results):
            w.add(k, len(m), r)
        return w

    s3 = best(run_add, a.rounds)
    w = run_add()
    plain = w.encode()
    print(f"IndexWriter.add: {s3 / n * 1e6:.2f} us/record")
    s4 = best(lambda: sum(1 for _ in decode(plain)), a.rounds)
    print(f"decode: {s4 / n * 1e6:.2f} us/record")
    back = list(decode(plain))
    assert len(back) == n and all(b.subject == r.subject and b.key == k for b, r, k in zip(back, results, keys))

    z3 = zstandard.ZstdCompressor(level=3).compress(plain)
    z9 = zstandard.ZstdCompressor(level=9).compress(plain)
    w0 = IndexWriter()
    for m, r in zip(msgs, results):
        w0.add(b"", len(m), r)
    z3k0 = zstandard.ZstdCompressor(level=3).compress(w0.encode())
    print(f"index: plain {len(plain) / n:.1f} B/record, zstd-3 {len(z3) / n:.1f}, zstd-9 {len(z9) / n:.1f} "
          f"(keys alone: 17 B/record plain; without keys zstd-3 {len(z3k0) / n:.1f})")

    cctx = zstandard.ZstdCompressor(level=3)
    stored, group, gsize = 0, [], 0
    for m in msgs:
        group.append(m)
        gsize += len(m)
        if gsize >= 4 << 20:
            stored += len(cctx.compress(b"".join(group)))
            group, gsize = [], 0
    if group:
        stored += len(cctx.compress(b"".join(group)))
    print(f"messages stored (zstd-3, 4 MiB groups): {stored / 1e6:.1f} MB; index zstd-3 = "
          f"{len(z3) / stored:.2%} of that, zstd-9 {len(z9) / stored:.2%}")
    # One day (bench/mutate.py: +1% new messages, an incremental at zstd level 9): the index
    # of those alone, against their stored bytes.
    day = max(1, n // 100)
    wd = IndexWriter()
    for k, m, r in zip(keys[-day:], msgs[-day:], results[-day:]):
        wd.add(k, len(m), r)
    zd = zstandard.ZstdCompressor(level=9).compress(wd.encode())
    sd = len(zstandard.ZstdCompressor(level=9).compress(b"".join(msgs[-day:])))
    print(f"one day ({day} new messages): index zstd-9 {len(zd)} B = {len(zd) / day:.1f} B/record = "
          f"{len(zd) / sd:.2%} of those messages stored ({sd / 1e6:.2f} MB)")
    est = s / n + s3 / n
    print(f"extract + add: {est * 1e6:.1f} us/message = {est * 46000:.2f} s CPU for 46,000 messages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
