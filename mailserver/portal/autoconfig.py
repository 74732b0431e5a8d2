"""Mail clients configure themselves from the portal listener: Thunderbird autoconfig
(``/.well-known/autoconfig/mail/config-v1.1.xml`` on the domain, ``/mail/config-v1.1.xml`` on
``autoconfig.<domain>``, both with ``?emailaddress=``) and Outlook's Autodiscover (``POST
/autodiscover/autodiscover.xml``). Answers depend only on the domain being hosted here (a
professionals' domain), never on whether the mailbox exists, so nobody can probe addresses.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from mailserver import accounts, clientconfig
from mailserver.accounts import AccountError
from mailserver.db.models import Domain
from mailserver.portal.http import RT

MAX_REQUEST = 64 * 1024  # an Autodiscover request is a few hundred bytes


async def _hosted(request: web.Request, domain: str) -> bool:
    async with request.app[RT].db.read() as session:
        patients = (
            await session.execute(select(Domain.patients).where(Domain.name == domain))
        ).scalar_one_or_none()
    return patients is False


def _domain_of(address: str) -> str | None:
    try:
        return accounts.validate_address(address).rpartition("@")[2]
    except AccountError:
        return None


async def thunderbird(request: web.Request) -> web.StreamResponse:
    address = request.query.get("emailaddress")
    if address is not None:
        domain = _domain_of(address)
    else:
        host = (request.host or "").rsplit(":", 1)[0].lower()
        domain = host.removeprefix("autoconfig.") or None
    if domain is None or not await _hosted(request, domain):
        raise web.HTTPNotFound(text="Aucune configuration pour ce domaine.")
    body = clientconfig.thunderbird(request.app[RT].settings, domain)
    return web.Response(body=body, content_type="application/xml", charset="utf-8")


def _xml(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="text/xml", charset="utf-8")


async def autodiscover(request: web.Request) -> web.StreamResponse:
    if request.content_length is not None and request.content_length > MAX_REQUEST:
        return _xml(clientconfig.autodiscover_error("Request too large"), 413)
    body = await request.content.read(MAX_REQUEST + 1)
    if len(body) > MAX_REQUEST:
        return _xml(clientconfig.autodiscover_error("Request too large"), 413)
    try:
        address = clientconfig.autodiscover_address(body)
    except clientconfig.AutodiscoverError:
        return _xml(clientconfig.autodiscover_error("Invalid Request"))
    domain = _domain_of(address)
    if domain is None or not await _hosted(request, domain):
        return _xml(clientconfig.autodiscover_error("Invalid Request"))
    return _xml(clientconfig.autodiscover(request.app[RT].settings, address.lower()))


def setup(app: web.Application) -> None:
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird)
    app.router.add_get("/mail/config-v1.1.xml", thunderbird)
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        app.router.add_post(path, autodiscover)
