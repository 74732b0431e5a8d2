"""IMAP command handlers, one module per family (Dovecot style); importing this package registers
every verb in :data:`mailserver.imap.base.REGISTRY`, which the session dispatches on."""

from mailserver.imap.commands import acl, auth, fetch, idle, mailbox, message, quota, search, store

__all__ = ["acl", "auth", "fetch", "idle", "mailbox", "message", "quota", "search", "store"]
