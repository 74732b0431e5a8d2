"""mailserver/portal"""
