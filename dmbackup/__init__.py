"""dmbackup: Maildir-aware backup and restore for a Postfix + Dovecot appliance."""
__version__ = "0.1.0"
