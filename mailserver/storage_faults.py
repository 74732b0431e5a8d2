"""Messages the storage cannot give back: one policy for every reader (IMAP, the portal, the queue).

A message file that is missing or unreadable (a node configured with another storage path, a lost
or unmounted share, a disk error) is the operator's problem, never the user's: the request that
needed it is answered "temporarily unavailable" (IMAP ``NO [UNAVAILABLE]``, RFC 5530; HTTP 503),
the session or worker carries on, and the fault is reported here once per request — one JSON log
line (no addresses: the ids and the OS error are what the operator needs) and one audit event (who
asked, from where, which messages) — however many messages that request could not read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mailserver.logs import log_event
from mailserver.store.store import MessageUnavailable

if TYPE_CHECKING:
    from mailserver.runtime import Runtime

_LISTED = 20  # blob ids named in one line / event; the count says how many there were


async def report(
    rt: Runtime,
    faults: Sequence[MessageUnavailable],
    *,
    service: str,
    actor: str,
    remote: str,
    request: str,
) -> None:
    """Log and audit one request's unreadable messages (``request``: the verb or path, no content)."""
    if not faults:
        return
    blobs = sorted({f.blob_id for f in faults})
    log_event(
        "message-unavailable",
        logging.ERROR,
        service=service,
        request=request,
        count=len(blobs),
        blobs=blobs[:_LISTED],
        reason=faults[0].reason,
    )
    listed = " ".join(str(b) for b in blobs[:_LISTED]) + (" …" if len(blobs) > _LISTED else "")
    await rt.audit.record(
        actor, "storage-error", remote, request, f"{len(blobs)} message(s) unreadable (blob {listed})"
    )
