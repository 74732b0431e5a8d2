"""mailserver/db"""
