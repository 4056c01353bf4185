"""Seeded generator of a realistic Dovecot Maildir++ store for the benchmarks.

The tree is what a Postfix + Dovecot appliance keeps under ``/var/vmail``:
``<root>/<domain>/<user>/Maildir/`` with INBOX (``cur/ new/ tmp/``) and Maildir++ folders
(``.Sent``, ``.Drafts``, ``.Trash``, ``.Junk``, ``.Archivio``, ``.Archivio.2024`` and a
modified-UTF-7 name, ``.Posta&AOA-inviata`` = "Posta inviata" with an a-grave), each with
its ``maildirfolder`` marker, ``dovecot-uidlist`` (version 3: ``3 V<uidvalidity> N<nextuid>
G<guid>`` then ``<uid> :<base name>`` lines), ``dovecot-keywords`` (``<n> <keyword>``),
``dovecot.index``/``.index.cache``/``.index.log`` and, at the Maildir root,
``subscriptions``, ``dovecot.list.index*``, ``dovecot.mailbox.log`` and
``dovecot-uidvalidity*``. Message files are named as Dovecot's LDA/LMTP names them,
``<time>.M<usec>P<pid>.<host>,S=<size>,W=<vsize>`` plus ``:2,<flags>`` in ``cur/`` (files
in ``new/`` carry no info suffix), and their mtime is the delivery time (IMAP INTERNALDATE).

Sizes: message size (headers + text body) is log-normal with a median near 6 KB; about 5%
of messages carry one 100 KB - 5 MB attachment. Half of those are "incompressible":
base64 of seeded random bytes, which is exactly what a JPEG, ZIP or PDF attachment looks
like on disk -- a compressor recovers only the base64 alphabet's slack (~25%), nothing more,
as with real photos and archives. The other half are base64 of text (CSV/log/XML-like),
which compresses as such attachments do. Text comes from pre-built pools (a Zipf-weighted
vocabulary of Italian/English business words and synthetic words, sentences drawn from it,
per-user signatures and the long privacy disclaimers Italian mail carries), so bodies
compress like real mail without whole messages ever repeating (backup tools that
deduplicate must not get free wins that a real store would not give them).

Determinism: every byte, name and mtime depends only on the seed and the parameters,
never on the clock, the host or the order workers run in: each user's mailbox is made by
its own ``random.Random`` seeded from ``(seed, domain, user)``, so users can be generated in
parallel (one process per core) and still come out identical.

Layout, file names and control-file formats come from dmbackup.quickstart.maildir_gen,
shared with the sample store and the tests' mail simulator; what is here is the content,
the sizes and the volumes.

Run ``python3 -m bench.corpus --help``; presets: ``small`` (~50 MB), ``default`` (~1.9 GB,
~46,000 files), ``scale`` (1,000,000 messages, attachment rate lowered to 0.5% so the
store stays near 12.5 GB).
"""

from __future__ import annotations

import argparse
import binascii
import json
import math
import multiprocessing
import os
import random
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace

from dmbackup.quickstart import maildir_gen as mg

# A fixed "now" so that the corpus never depends on the clock: 2025-11-03 08:00 UTC.
EPOCH_NOW = 1762156800

MB = 1_000_000
KB = 1_000


@dataclass(frozen=True)
class Params:
    """Everything that shapes the corpus; together with ``seed`` it fixes every byte."""

    seed: int = 1
    messages: int = 0                 # 0: derived from target_bytes
    target_bytes: int = 1_900 * MB    # used when messages == 0
    users: int = 0                    # 0: about one user per 1,100 messages
    domains: int = 3
    median_size: int = 6_000          # bytes, headers + text body
    size_sigma: float = 1.0           # log-normal sigma of the text message size
    attach_rate: float = 0.05
    attach_min: int = 100 * KB
    attach_max: int = 5 * MB
    attach_median: int = 400 * KB
    attach_sigma: float = 1.0
    incompressible_share: float = 0.5
    host: str = "mx1.example.it"


PRESETS: dict[str, Params] = {
    "small": Params(target_bytes=50 * MB, users=4, domains=2),
    "default": Params(target_bytes=1_900 * MB),
    "scale": Params(messages=1_000_000, users=400, domains=8, attach_rate=0.005),
}

# The folder whose directory is ``.Posta&AOA-inviata``: "Posta", a-grave, "inviata".
POSTA = "Posta\u00e0inviata"
# (IMAP name, share of the user's messages)
FOLDERS: list[tuple[str, float]] = [
    ("INBOX", 0.44),
    ("Sent", 0.17),
    (POSTA, 0.05),
    ("Drafts", 0.01),
    ("Trash", 0.05),
    ("Junk", 0.04),
    ("Archivio", 0.0),
    ("Archivio/2024", 0.24),
]

KEYWORDS = ["$Forwarded", "$Junk", "$NotJunk", "$Label1", "$Label2", "NonJunk"]

DOMAINS = ["studio-rossi.it", "ferramenta-bianchi.it", "comune-esempio.it", "agenzia-verdi.it",
           "example.it", "coop-lavoro.it", "hotel-lago.it", "officina-neri.it", "scuola-mare.it",
           "farmacia-sole.it"]
FIRST = ["mario", "giulia", "luca", "francesca", "marco", "sara", "andrea", "chiara", "paolo",
         "elena", "giorgio", "anna", "stefano", "laura", "davide", "martina", "roberto", "silvia",
         "alessandro", "valentina", "simone", "federica", "matteo", "paola", "info", "amministrazione",
         "segreteria", "ufficio.tecnico", "ordini", "fatture"]
LAST = ["rossi", "bianchi", "verdi", "russo", "ferrari", "esposito", "romano", "colombo", "ricci",
        "marino", "greco", "bruno", "gallo", "conti", "deluca", "mancini", "costa", "giordano",
        "rizzo", "lombardi", "moretti", "barbieri", "fontana", "santoro"]

_REAL_WORDS = """
il la di che e un una per con non sono del della al alla come anche ma se questo questa
nel nella ci mi ti lo gli le da in su tra fra dopo prima sempre ancora oggi domani ieri
grazie saluti cordiali buongiorno buonasera gentile dottore dottoressa signor signora ufficio
fattura ordine preventivo contratto allegato allegati documento documenti pratica riunione
incontro consegna spedizione pagamento bonifico scadenza importo totale iva sconto cliente
fornitore progetto lavori cantiere verbale relazione richiesta risposta conferma disponibilita
settimana prossima mese anno lunedi martedi mercoledi giovedi venerdi mattina pomeriggio sera
ora tempo modo caso parte punto base sede comune regione provincia via piazza numero codice
fiscale partita telefono cellulare email indirizzo posta certificata protocollo nota circolare
the and to of a in is that for it with as on be at by this we you are have from or will
please thanks regards best kind meeting attached invoice order quote delivery payment due
project report update schedule review draft final version deadline team client office
can could would should let me know if any questions further details below above following
""".split()

_SYLLABLES = ("ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo ga ge gi go la le li "
              "lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su "
              "ta te ti to tu va ve vi vo za ze zi zo str tra pro con ver per ment zion are ere "
              "ire ato uto ito ale ile ore ura anza enza").split()

DISCLAIMER = (
    "AVVISO DI RISERVATEZZA: Le informazioni contenute in questo messaggio di posta elettronica\n"
    "e negli eventuali allegati sono riservate e destinate esclusivamente al destinatario indicato.\n"
    "Ai sensi del Regolamento UE 2016/679 (GDPR) e del D.Lgs. 196/2003, qualora il messaggio Le\n"
    "fosse pervenuto per errore, La preghiamo di eliminarlo senza copiarlo e di darne notizia al\n"
    "mittente. Ogni utilizzo non autorizzato del contenuto di questo messaggio costituisce reato.\n"
    "This e-mail and any attachments are confidential and intended solely for the addressee.\n"
    "If you have received it in error, please notify the sender and delete it. Thank you.\n"
)

ATTACH_INCOMPRESSIBLE = [("image/jpeg", "IMG_{n:04d}.jpg"), ("application/pdf", "scansione_{n}.pdf"),
                         ("application/zip", "documenti_{n}.zip"),
                         ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                          "contratto_{n}.docx")]
ATTACH_COMPRESSIBLE = [("text/csv", "estratto_conto_{n}.csv"), ("text/plain", "log_{n}.txt"),
                       ("application/xml", "fattura_elettronica_IT{n:011d}.xml"),
                       ("text/calendar", "invito_{n}.ics")]


# --------------------------------------------------------------------------- text pools

class Pools:
    """Pre-built text shared by every user: built once from the seed, then only sampled."""

    def __init__(self, seed: int, n_sentences: int = 60_000):
        rng = random.Random(f"pools:{seed}")
        words = list(_REAL_WORDS)
        seen = set(words)
        while len(words) < 6_000:
            w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
            if w not in seen:
                seen.add(w)
                words.append(w)
        # Real words are the frequent ones (Zipf over the list order, real words first).
        cum, total = [], 0.0
        for i in range(len(words)):
            total += 1.0 / (i + 2) ** 1.05
            cum.append(total)
        # One draw for all the words, then cut into sentences of 5-13 words (fast).
        lengths = [5 + (b % 9) for b in rng.randbytes(n_sentences)]
        stream = rng.choices(words, cum_weights=cum, k=sum(lengths))
        ends = rng.choices((".", ".", ".", ",", "?", ":"), k=n_sentences)
        sentences, pos = [], 0
        for k, end in zip(lengths, ends):
            s = " ".join(stream[pos:pos + k])
            pos += k
            sentences.append((s[0].upper() + s[1:] + end)[:76])
        self.sentences = sentences
        self.words = words
        self.subjects = [" ".join(rng.choices(words, cum_weights=cum, k=rng.randint(2, 7))).capitalize()
                         for _ in range(4_000)]
        self.csv_rows = [";".join([
            f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/2024",
            rng.choice(words).upper(), rng.choice(sentences)[:30],
            f"{rng.randint(1, 99999)},{rng.randint(0, 99):02d}", "EUR"]) for _ in range(20_000)]


_POOLS: Pools | None = None
_POOLS_SEED: int | None = None


def pools(seed: int) -> Pools:
    """The pools for ``seed``, built once per process (forked workers inherit them)."""
    global _POOLS, _POOLS_SEED
    if _POOLS is None or _POOLS_SEED != seed:
        _POOLS, _POOLS_SEED = Pools(seed), seed
    return _POOLS


# --------------------------------------------------------------------------- helpers

_WD = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MON = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def rfc5322_date(t: int) -> str:
    tm = time.gmtime(t + 3600)
    return (f"{_WD[tm.tm_wday]}, {tm.tm_mday:02d} {_MON[tm.tm_mon - 1]} {tm.tm_year} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} +0100")


def b64_lines(data: bytes, width: int = 76) -> bytes:
    enc = binascii.b2a_base64(data, newline=False)
    return b"\n".join([enc[i:i + width] for i in range(0, len(enc), width)]) + b"\n"


def rand_b64(rng: random.Random, nbytes: int) -> str:
    return binascii.b2a_base64(rng.randbytes(nbytes), newline=False).decode()


def person(rng: random.Random) -> tuple[str, str]:
    f, l = rng.choice(FIRST), rng.choice(LAST)
    name = f"{f.split('.')[0].capitalize()} {l.capitalize()}"
    dom = rng.choice(DOMAINS[:6] + ["gmail.com", "libero.it", "pec.it", "outlook.com", "tim.it"])
    return name, f"{f}.{l}@{dom}"


# --------------------------------------------------------------------------- messages

class MessageFactory:
    """Builds RFC 5322 messages for one mailbox owner from the shared pools."""

    def __init__(self, p: Params, pl: Pools, rng: random.Random, owner: str, owner_name: str):
        self.p, self.pl, self.rng = p, pl, rng
        self.owner, self.owner_name = owner, owner_name
        self.mu = math.log(p.median_size)
        self.amu = math.log(p.attach_median)
        sig_lines = ["-- ", owner_name, rng.choice(["Responsabile amministrativo", "Ufficio tecnico",
                                                      "Segreteria", "Titolare", "Commerciale"]),
                     owner.split("@")[1].split(".")[0].replace("-", " ").title() + " S.r.l.",
                     f"Tel. +39 0{rng.randint(10, 99)} {rng.randint(100000, 999999)}",
                     f"www.{owner.split('@')[1]}"]
        self.signature = "\n".join(sig_lines) + "\n\n" + DISCLAIMER
        self.contacts = [person(rng) for _ in range(rng.randint(15, 60))]
        self.counter = 0

    def text(self, n: int, quote: bool = False) -> str:
        sents = self.pl.sentences
        k = max(1, n // 60)
        lines = self.rng.choices(sents, k=k)
        out, para = [], self.rng.randint(3, 7)
        for i, s in enumerate(lines):
            out.append(("> " + s) if quote else s)
            if i % para == para - 1:
                out.append(">" if quote else "")
        return "\n".join(out) + "\n"

    def attachment(self, size: int) -> tuple[str, str, bytes]:
        rng = self.rng
        self.counter += 1
        raw = max(1, size * 3 // 4)
        if rng.random() < self.p.incompressible_share:
            ctype, name = rng.choice(ATTACH_INCOMPRESSIBLE)
            data = rng.randbytes(raw)
        else:
            ctype, name = rng.choice(ATTACH_COMPRESSIBLE)
            if ctype == "text/csv":
                rows = rng.choices(self.pl.csv_rows, k=raw // 60 + 1)
            else:
                rows = rng.choices(self.pl.sentences, k=raw // 55 + 1)
            data = "\r\n".join(rows).encode()[:raw]
        return ctype, name.format(n=rng.randint(1, 99999)), b64_lines(data)

    def message(self, t: int, outgoing: bool, with_attachment: bool,
                size_hint: int | None = None) -> bytes:
        rng, pl = self.rng, self.pl
        peer_name, peer = rng.choice(self.contacts)
        if outgoing:
            frm, to = f"{self.owner_name} <{self.owner}>", f"{peer_name} <{peer}>"
            sender_dom = self.owner.split("@")[1]
        else:
            frm, to = f"{peer_name} <{peer}>", f"{self.owner_name} <{self.owner}>"
            sender_dom = peer.split("@")[1]
        subj = rng.choice(pl.subjects)
        if rng.random() < 0.35:
            subj = rng.choice(("Re: ", "R: ", "Fwd: ", "I: ")) + subj
        if rng.random() < 0.08:   # RFC 2047 encoded-word, as Italian clients send accents
            subj = "=?UTF-8?Q?" + subj.replace(" ", "_")[:40] + "_=C3=A0?="
        date = rfc5322_date(t)
        qid = "".join(rng.choices("0123456789ABCDEFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz", k=11))
        mid = f"<{rng.getrandbits(64):016x}.{t}@{sender_dom}>"
        h = []
        if not outgoing:
            h += [f"Return-Path: <{peer}>", f"Delivered-To: {self.owner}",
                  f"Received: from {self.p.host}\n\tby {self.p.host} with LMTP\n\tid "
                  f"{rand_b64(rng, 12)}\n\t(envelope-from <{peer}>)\n\tfor <{self.owner}>; {date}",
                  f"Received: from mail.{sender_dom} (mail.{sender_dom} [{rng.randint(2, 223)}."
                  f"{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}])\n\t(using TLSv1.3 "
                  f"with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\n\t(No client certificate "
                  f"requested)\n\tby {self.p.host} (Postfix) with ESMTPS id {qid}\n\tfor "
                  f"<{self.owner}>; {date}",
                  f"Authentication-Results: {self.p.host};\n\tdkim=pass (2048-bit key; unprotected) "
                  f"header.d={sender_dom} header.i=@{sender_dom} header.b=\"{rand_b64(rng, 6)}\";\n\t"
                  f"spf=pass smtp.mailfrom={sender_dom}",
                  f"X-Spam-Status: No, score={rng.uniform(-3, 4):.1f} required=5.0 tests=BAYES_00,"
                  f"DKIM_SIGNED,DKIM_VALID,SPF_PASS autolearn=ham version=3.4.6"]
            sig = rand_b64(rng, 256)
            h.append(f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={sender_dom};\n\t"
                     f"s=mail; t={t}; bh={rand_b64(rng, 32)};\n\th=From:To:Subject:Date:Message-ID;\n\tb="
                     + "\n\t ".join(sig[i:i + 70] for i in range(0, len(sig), 70)))
        h += [f"Message-ID: {mid}", f"Date: {date}", f"From: {frm}", f"To: {to}"]
        if rng.random() < 0.25:
            cn, ca = rng.choice(self.contacts)
            h.append(f"Cc: {cn} <{ca}>")
        h += [f"Subject: {subj}", "MIME-Version: 1.0"]
        if rng.random() < 0.4:
            h.append(f"User-Agent: {rng.choice(['Mozilla Thunderbird', 'Roundcube Webmail/1.6.5', 'Microsoft Outlook 16.0', 'K-9 Mail'])}")
        head = "\n".join(h) + "\n"

        target = size_hint or int(rng.lognormvariate(self.mu, self.p.size_sigma))
        budget = max(200, target - len(head) - 200)
        sig = self.signature if rng.random() < 0.6 else ""
        budget = max(120, budget - len(sig))
        quoted = ""
        if rng.random() < 0.3:
            qn = budget // 2
            quoted = (f"\nIl giorno {rfc5322_date(t - rng.randint(3600, 86400 * 20))}, {peer_name} "
                      f"ha scritto:\n" + self.text(qn, quote=True))
            budget -= qn
        html = rng.random() < 0.35
        if html:
            plain_n, html_n = int(budget * 0.45), int(budget * 0.55)
        else:
            plain_n, html_n = budget, 0
        plain = self.text(plain_n) + quoted + ("\n" + sig if sig else "")

        boundary = f"----=_Part_{rng.getrandbits(48):012x}"
        parts: list[bytes] = []
        if html:
            paras = self.text(html_n).split("\n\n")
            body_html = ("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">"
                         "</head><body style=\"font-family:Calibri,Arial,sans-serif;font-size:11pt\">\n"
                         + "\n".join(f"<p class=\"MsoNormal\" style=\"margin:0cm\"><span style=\"font-size:"
                                     f"11pt\">{pp}</span></p>" for pp in paras if pp)
                         + "\n</body></html>\n")
            alt = f"----=_Alt_{rng.getrandbits(48):012x}"
            text_part = (f"Content-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
                         f"--{alt}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
                         f"{plain}\n--{alt}\nContent-Type: text/html; charset=utf-8\n"
                         f"Content-Transfer-Encoding: 8bit\n\n{body_html}\n--{alt}--\n")
        else:
            text_part = ("Content-Type: text/plain; charset=utf-8; format=flowed\n"
                         f"Content-Transfer-Encoding: 8bit\n\n{plain}")
        if with_attachment:
            asize = int(rng.lognormvariate(self.amu, self.p.attach_sigma))
            asize = min(self.p.attach_max, max(self.p.attach_min, asize))
            ctype, fname, payload = self.attachment(asize)
            parts.append(f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n"
                         f"This is a multi-part message in MIME format.\n--{boundary}\n{text_part}\n"
                         f"--{boundary}\nContent-Type: {ctype}; name=\"{fname}\"\n"
                         f"Content-Disposition: attachment; filename=\"{fname}\"\n"
                         f"Content-Transfer-Encoding: base64\n\n".encode())
            parts.append(payload)
            parts.append(f"\n--{boundary}--\n".encode())
        else:
            parts.append(text_part.encode())
        return head.encode() + b"".join(parts)


# --------------------------------------------------------------------------- binary-ish index files

def index_file(rng: random.Random, uids: list[int], kind: str) -> bytes:
    """Bytes shaped like dovecot.index / .cache / .log: little-endian records, some text.

    Only their size, churn and (in)compressibility matter to a backup benchmark; Dovecot
    rebuilds these files when they do not parse.
    """
    n = len(uids)
    hdr = struct.pack("<BBHIIIII", 7, 3, 256, 0x1000, n, uids[-1] + 1 if uids else 1,
                      rng.getrandbits(32), EPOCH_NOW) + bytes(228)
    if kind == "index":
        recs = b"".join(struct.pack("<IBBHII", u, rng.choice((0, 8, 8, 8, 9, 12)), 0, 0,
                                    rng.getrandbits(24), 0) for u in uids)
        return hdr + recs
    if kind == "cache":
        words = _POOLS.words if _POOLS else ["x"]
        rows = [struct.pack("<II", u, rng.getrandbits(20)) + (" ".join(rng.choices(words, k=rng.randint(4, 12)))
                                                             + "\x00").encode() for u in uids]
        return hdr + b"".join(rows) + rng.randbytes(min(4096, 16 + 8 * n))
    if kind == "log":
        return hdr + rng.randbytes(rng.randint(1_000, 24_000))
    if kind == "list":
        return hdr + rng.randbytes(rng.randint(300, 3_000))
    raise ValueError(kind)


# The shared Maildir writers, under the names bench/mutate.py and the tests use.
base_name, flags_sorted = mg.message_base, mg.flags_sorted
write_file, replace_file = mg.write_file, mg.replace_file
uidlist_bytes, parse_uidlist = mg.uidlist_bytes, mg.parse_uidlist


# --------------------------------------------------------------------------- one mailbox

@dataclass
class Stats:
    files: int = 0
    bytes: int = 0
    messages: int = 0
    message_bytes: int = 0
    attachments: int = 0
    users: int = 0
    folders: int = 0

    def add(self, o: "Stats") -> None:
        for k, v in asdict(o).items():
            setattr(self, k, getattr(self, k) + v)


def folder_flags(rng: random.Random, folder: str) -> str:
    r = rng.random()
    if folder == "INBOX":
        if r < 0.70:
            return "S"
        if r < 0.82:
            return "RS"
        if r < 0.85:
            return "FS"
        if r < 0.87:
            return "PS"
        if r < 0.92:
            return "Sd" if rng.random() < 0.5 else "Sa"
        return ""
    if folder in ("Sent", POSTA):
        return "S"
    if folder == "Drafts":
        return "DS"
    if folder == "Junk":
        return "Sb" if r < 0.7 else "b"
    if folder == "Trash":
        return "S" if r < 0.9 else "ST"
    return "S" if r < 0.95 else "FS"


def make_user(args: tuple) -> Stats:
    root, p, domain, user, n_messages = args
    rng = random.Random(f"user:{p.seed}:{domain}:{user}")
    pl = pools(p.seed)
    owner = f"{user}@{domain}"
    fmt_name = " ".join(x.capitalize() for x in user.replace("_", ".").split(".") if x)
    fac = MessageFactory(p, pl, rng, owner, fmt_name or user)
    st = Stats(users=1)
    mdir = mg.mailbox_dir(root, owner)
    os.makedirs(mdir, mode=0o700, exist_ok=True)
    pid_base = rng.randint(1000, 30000)

    # Split the user's messages among folders (multinomial, deterministic).
    shares = [s for _, s in FOLDERS]
    counts = [0] * len(FOLDERS)
    for i in rng.choices(range(len(FOLDERS)), weights=shares, k=n_messages):
        counts[i] += 1

    subs = []
    for (folder, _), count in zip(FOLDERS, counts):
        # Delivery times: Archivio/2024 holds 2024, the rest the last ~300 days.
        if folder == "Archivio/2024":
            t0, t1 = 1704067200, 1735689599
        else:
            t0, t1 = EPOCH_NOW - 300 * 86400, EPOCH_NOW - 3600
        fdir = mg.make_folder(mdir, folder, mode=0o700, marker=True, marker_mtime=t0)
        st.folders += 1
        if fdir != mdir:
            st.files += 1
            # Dovecot 1 style: the name as the directory has it, without the leading dot
            subs.append(os.path.basename(fdir)[1:])
        times = sorted(rng.randint(t0, t1) for _ in range(count))
        uidvalidity = t0 + rng.randint(0, 86400 * 30)
        uid = rng.randint(1, 40)
        entries: list[tuple[int, str]] = []
        new_tail = max(0, int(count * 0.015)) if folder == "INBOX" else 0
        outgoing = folder in ("Sent", POSTA, "Drafts")
        used: set[str] = set()
        for i, t in enumerate(times):
            attach = rng.random() < p.attach_rate
            data = fac.message(t, outgoing, attach)
            vsize = len(data) + data.count(b"\n")
            while True:
                base = base_name(t, rng.randint(0, 999999), pid_base + rng.randint(0, 5000),
                                 p.host, len(data), vsize)
                if base not in used:
                    used.add(base)
                    break
            if i >= count - new_tail:
                sub, flags = "new", ""
            else:
                sub, flags = "cur", folder_flags(rng, folder)
            mg.write_message(fdir, sub, base, data, flags=flags, mtime=t)
            st.files += 1
            st.messages += 1
            st.bytes += len(data)
            st.message_bytes += len(data)
            st.attachments += attach
            entries.append((uid, base))
            uid += 1 if rng.random() < 0.97 else rng.randint(2, 6)   # expunged UIDs leave gaps
        guid = f"{rng.getrandbits(128):032x}"
        ctl = {
            "dovecot-uidlist": uidlist_bytes(uidvalidity, uid, guid, entries),
        }
        if folder in ("INBOX", "Junk") or rng.random() < 0.3:
            ctl["dovecot-keywords"] = mg.keywords_bytes(KEYWORDS)
        uids = [u for u, _ in entries]
        if count or rng.random() < 0.5:
            ctl["dovecot.index.log"] = index_file(rng, uids, "log")
            ctl["dovecot.index.cache"] = index_file(rng, uids, "cache")
            if count > 20:
                ctl["dovecot.index"] = index_file(rng, uids, "index")
        ctl_time = times[-1] if times else t0
        for name, data in ctl.items():
            write_file(os.path.join(fdir, name), data, mtime=ctl_time)
            st.files += 1
            st.bytes += len(data)

    uv = rng.getrandbits(32)
    root_files = {
        "subscriptions": mg.subscriptions_bytes(subs),
        "dovecot.list.index": index_file(rng, list(range(1, len(FOLDERS) + 1)), "list"),
        "dovecot.list.index.log": index_file(rng, [], "log"),
        "dovecot.mailbox.log": rng.randbytes(24 * rng.randint(1, 20)),
        "dovecot-uidvalidity": f"{uv:08x}\n".encode(),
        f"dovecot-uidvalidity.{uv:08x}": b"",
    }
    for name, data in root_files.items():
        write_file(os.path.join(mdir, name), data, mtime=EPOCH_NOW - 3600)
        st.files += 1
        st.bytes += len(data)
    return st


# --------------------------------------------------------------------------- the whole store

def mean_message_size(p: Params, samples: int = 40_000) -> float:
    """Expected on-disk size of one message under ``p`` (Monte-Carlo, fixed RNG)."""
    rng = random.Random(12345)
    mu, amu = math.log(p.median_size), math.log(p.attach_median)
    tot = 0.0
    for _ in range(samples):
        s = rng.lognormvariate(mu, p.size_sigma)
        s = max(s, 1_700.0) * 0.967  # floor: headers; bodies land ~3% under their target
        if rng.random() < p.attach_rate:
            s += min(p.attach_max, max(p.attach_min, rng.lognormvariate(amu, p.attach_sigma))) * 1.013
        tot += s
    return tot / samples


def plan(p: Params) -> list[tuple[str, str, int]]:
    """(domain, user, messages) for every mailbox: a deterministic function of ``p``."""
    n = p.messages or max(1, round(p.target_bytes / mean_message_size(p)))
    users = p.users or max(2, round(n / 1_100))
    rng = random.Random(f"plan:{p.seed}")
    domains = DOMAINS[:max(1, min(p.domains, len(DOMAINS)))]
    weights = [rng.lognormvariate(0, 0.8) for _ in range(users)]
    tot = sum(weights)
    counts = [int(n * w / tot) for w in weights]
    for i in range(n - sum(counts)):
        counts[i % users] += 1
    out, names = [], set()
    for i, c in enumerate(counts):
        dom = domains[i % len(domains)]
        while True:
            u = f"{rng.choice(FIRST)}.{rng.choice(LAST)}" if rng.random() < 0.85 else rng.choice(FIRST)
            if (dom, u) not in names:
                break
            u = f"{u}{rng.randint(2, 99)}"
            if (dom, u) not in names:
                break
        names.add((dom, u))
        out.append((dom, u, c))
    return out


def generate(root: str, p: Params, jobs: int | None = None, force: bool = False) -> dict:
    """Write the corpus under ``root`` (must be absent or empty unless ``force``)."""
    if os.path.exists(root) and os.listdir(root):
        if not force:
            raise SystemExit(f"corpus: {root} exists and is not empty (use --force to replace it)")
        shutil.rmtree(root)
    t_start = time.perf_counter()
    os.makedirs(root, mode=0o755, exist_ok=True)
    pools(p.seed)          # build once in the parent; forked workers inherit it
    work = [(root, p, d, u, n) for d, u, n in plan(p)]
    work.sort(key=lambda w: -w[4])   # biggest first: better balance across workers
    jobs = jobs or os.cpu_count() or 1
    total = Stats()
    if jobs > 1 and len(work) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            for st in pool.imap_unordered(make_user, work):
                total.add(st)
    else:
        for w in work:
            total.add(make_user(w))
    secs = time.perf_counter() - t_start
    return {"root": root, "params": asdict(p), **asdict(total), "seconds": round(secs, 2),
            "mb_per_s": round(total.bytes / MB / secs, 1) if secs else None,
            "mailboxes": [f"{u}@{d}" for d, u, _ in plan(p)]}


def params_for(preset: str, **over) -> Params:
    p = PRESETS[preset]
    over = {k: v for k, v in over.items() if v is not None}
    return replace(p, **over)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="directory to create (the mail store, like /var/vmail)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--small", dest="preset", action="store_const", const="small",
                    help="same as --preset small (~50 MB)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--messages", type=int, default=None, help="number of messages (overrides the size)")
    ap.add_argument("--size-mb", type=float, default=None, help="approximate total size in MB")
    ap.add_argument("--users", type=int, default=None)
    ap.add_argument("--attach-rate", type=float, default=None)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: nproc)")
    ap.add_argument("--force", action="store_true", help="replace an existing non-empty root")
    a = ap.parse_args(argv)
    over = dict(seed=a.seed, users=a.users, attach_rate=a.attach_rate)
    if a.messages is not None:
        over["messages"] = a.messages
    if a.size_mb is not None:
        over["target_bytes"], over["messages"] = int(a.size_mb * MB), 0
    p = params_for(a.preset, **over)
    info = generate(os.path.abspath(a.root), p, jobs=a.jobs, force=a.force)
    info.pop("mailboxes")
    json.dump(info, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
