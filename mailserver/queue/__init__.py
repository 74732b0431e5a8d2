"""mailserver/queue"""
