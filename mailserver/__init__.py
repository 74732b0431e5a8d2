"""Caducée mail server: SMTP MTA and submission, IMAP, store, delivery, queue and portal."""
