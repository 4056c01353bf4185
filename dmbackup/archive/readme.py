"""README-RESTORE.txt: what a repository says, in plain words, to the person holding the disk.

Written by ``Repository.create`` at the top of every repository (``layout.README``).
"""

README_RESTORE = """\
This disk holds dmbackup backups of the mail server {hostname}.

To restore, on a machine with dmbackup installed and the backup passphrase at hand:

  1. Describe this disk as a target in /etc/dmbackup/dmbackup.toml, for example
       [targets.disk]
       type = "dir"
       path = "/mnt/this-disk"
     and set [encryption] passphrase_file (a file with mode 0600), or export
     DMBACKUP_PASSPHRASE.
  2. dmbackup init disk                            (enrol this disk on this machine)
     It opens the key with the passphrase and shows the repository id, when it was
     created, the newest snapshot and the key fingerprint. Compare the fingerprint with
     the one noted when the backups were set up: the same fingerprint means the same key.
  3. dmbackup snapshots --target disk              (what is here)
  4. dmbackup verify --target disk --read-data     (is it intact)
  5. dmbackup restore --target disk --to /srv/restored --uid-gap 1000   (newest snapshot)
     dmbackup restore --target disk --at 2026-11-28T02:30 --mailbox user@example.it --to DIR
     (--uid-gap 1000 keeps mail clients from missing new mail after the restore; a
     restore that stopped half way is finished by the same command plus --resume)
  6. Stop Dovecot, move the restored tree into place as the mail store, start Dovecot,
     then run
       dmbackup restore --resync
     (or, without a config for dmbackup, doveadm force-resync -A '*')

Layout: chains/<chain>/ holds one full snapshot and its incrementals; a snapshot exists
when its .catalog file exists. keys/ holds the master key, encrypted with the passphrase:
without the passphrase nothing here can be read. Do not edit or move files by hand.
"""
