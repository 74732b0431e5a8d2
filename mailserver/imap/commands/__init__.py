"""IMAP command handlers, one module per family (Dovecot style); importing this package registers
every verb in :data:`mailserver.imap.base.REGISTRY`, which the session dispatches on."""

from mailserver.imap.commands import auth, fetch, idle, mailbox, message, quota, search, store

__all__ = ["auth", "fetch", "idle", "mailbox", "message", "quota", "search", "store"]
