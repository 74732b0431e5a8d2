"""mailserver/imap"""
