"""mailserver/smtp"""
