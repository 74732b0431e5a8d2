"""mailserver/store"""
