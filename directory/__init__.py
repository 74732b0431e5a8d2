"""The national directory: professionals, structures, mailboxes and patients."""
