"""The portal's one refusal type, shared by the services (``service``, ``factors``) and both front ends."""

from __future__ import annotations


class PortalError(Exception):
    """A refused portal request: ``status`` is the HTTP status, ``message`` the French text shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
