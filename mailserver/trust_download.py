"""The published trust list, downloaded over HTTPS from ``[trust] url`` (``caducee trust refresh``,
and every ``refresh_interval`` while ``caducee serve`` runs).

The server's certificate must chain to ``[trust] ca_file`` (the system's CAs when empty) and name the
URL's host. A download that fails (connection, TLS, an HTTP status other than 200, the ``timeout``, more
than ``max_size``), or a document that does not parse, keeps the current list; so does one that would
remove more than ``max_removed`` percent of the current domains (unless forced). Every outcome is counted
(``caducee_trust_list_refreshes_total{result}``: ``installed``, ``unchanged``, ``failed``, ``refused``),
logged, and audited as ``trust-refresh`` (who asked, the URL, what happened).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiohttp

from config.settings import TrustSettings
from mailserver import trust
from mailserver.logs import log_event
from mailserver.runtime import Runtime

log = logging.getLogger("caducee.trust")


@dataclass(frozen=True)
class Refreshed:
    """A list installed: what changed."""

    report: trust.ImportReport

    @property
    def changed(self) -> bool:
        r = self.report
        return bool(r.added or r.removed or r.changed)

    def summary(self) -> str:
        r = self.report
        counts = (len(r.added), len(r.removed), len(r.changed), r.unchanged)
        return "{} added, {} removed, {} changed, {} unchanged".format(*counts)


def _tls(settings: TrustSettings) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise trust.TrustListError(f"cannot load [trust] ca_file {settings.ca_file}: {exc}") from None


async def download(settings: TrustSettings) -> bytes:
    """The document at ``url``, or TrustListError saying why there is none."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(settings.url, ssl=_tls(settings), allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise trust.TrustListError(f"{settings.url} answered HTTP {resp.status} {resp.reason}")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > settings.max_size:
                    raise trust.TrustListError(f"{settings.url} is larger than [trust] max_size")
            return bytes(data)
    except TimeoutError:
        raise trust.TrustListError(
            f"{settings.url}: no complete answer within {settings.timeout:g}s"
        ) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise trust.TrustListError(
            f"{settings.url}: server certificate refused: {exc.certificate_error}"
        ) from None
    except aiohttp.ClientError as exc:
        raise trust.TrustListError(f"{settings.url}: {type(exc).__name__}: {exc}") from None


async def refresh(rt: Runtime, actor: str, force: bool = False) -> Refreshed:
    """Download, check and install the list; TrustListError (the list unchanged) otherwise."""
    settings = rt.settings.trust
    request = f"GET {settings.url}" + (" (forced)" if force else "")
    try:
        entries = trust.parse_trust_list(await download(settings))
        limit = None if force else settings.max_removed
        result = Refreshed(await trust.replace_all(rt.db, entries, max_removed=limit))
    except trust.TrustListError as exc:
        outcome = "refused" if isinstance(exc, trust.TooManyRemoved) else "failed"
        rt.metrics.trust_refresh(outcome)
        log_event("trust-refresh", logging.ERROR, url=settings.url, result=outcome, reason=str(exc)[:500])
        await _audit(rt, actor, request, f"{outcome}: {exc}; the trust list is unchanged")
        raise
    outcome = "installed" if result.changed else "unchanged"
    rt.metrics.trust_refresh(outcome)
    log_event("trust-refresh", url=settings.url, result=outcome, summary=result.summary())
    await _audit(rt, actor, request, f"{outcome}: {result.summary()}")
    return result


async def _audit(rt: Runtime, actor: str, request: str, response: str) -> None:
    try:
        await rt.audit.record(actor, "trust-refresh", "", request, response)
    except Exception:  # Audit.record has logged it and counted it; the refresh's outcome stands
        return


async def refresh_periodically(rt: Runtime) -> None:
    """``refresh`` now and every ``refresh_interval``; a failure waits for the next turn."""
    while True:
        try:
            await refresh(rt, "server")
        except trust.TrustListError:
            pass  # counted, logged and audited by ``refresh``
        except Exception:  # the database, say: try again next turn rather than end the task
            log.exception("trust list refresh from %s failed", rt.settings.trust.url)
        await asyncio.sleep(rt.settings.trust.refresh_interval)
