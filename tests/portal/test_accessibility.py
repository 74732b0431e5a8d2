"""axe-core (0 serious or critical violations) and a 320 px width on every portal page, in chromium.

The pages are listed in ``tests/portal/a11y.py`` (``PAGES``); a page added to the router without its
line there fails ``test_every_page_is_listed``.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Route

from mailserver import accounts, large_files
from mailserver.portal import web
from mailserver.runtime import Runtime
from tests.portal import a11y
from tests.portal.conftest import Portal, login
from tests.portal.helpers import DOCTOR, PATIENT, build, send, tiny_png


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_page_is_listed(runtime: Runtime) -> None:
    app = web.make_app(runtime)
    routes = {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET"
        and r.resource is not None
        and not r.resource.canonical.startswith(("/api/", "/static"))
    }
    listed = {p.covers for p in a11y.PAGES}
    assert routes - set(a11y.NOT_PAGES) - set(a11y.FLOW_PAGES) - listed == set()
    assert {"(404)"} <= listed


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_page_passes_axe_and_320px(portal: Portal, browser: Browser) -> None:
    msg = build(DOCTOR, PATIENT, "Ordonnance et photo", "Bonjour,\nvoici l'ordonnance.", name="Dr Martin")
    msg.add_attachment(tiny_png(), maintype="image", subtype="png", filename="photo.png")
    msg.add_attachment(
        b"%PDF-1.4\n%\xe2\xe3\n", maintype="application", subtype="pdf", filename="ordonnance.pdf"
    )
    [conversation] = await send(portal.rt, msg)
    doctor = await accounts.get_mailbox(portal.rt, DOCTOR)
    scan = await large_files.store_bytes(
        portal.rt,
        doctor.id,
        "scanner_thoracique_2026-12-03_coupes_fines_serie_2.dcm",
        "application/dicom",
        b"\0" * 4096,
    )
    await large_files.attach(portal.rt, [scan], [PATIENT], "<scanner@a.mssante.test>")
    data = {"conversation": conversation, "file": scan.id}
    anonymous = await browser.new_page(viewport={"width": 1024, "height": 768})
    signed_in = await browser.new_page(viewport={"width": 1024, "height": 768})

    async def without_challenge(route: Route) -> None:
        """The large-file page answers a stranger 401 with a Basic challenge (professionals sign in
        there); headless chromium aborts on it where a browser asks, and shows the page once the
        dialog is dismissed: that page is the one checked."""
        response = await route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "www-authenticate"}
        await route.fulfill(response=response, headers=headers)

    await anonymous.route("**/fichiers/*", without_challenge)
    await login(signed_in, portal.url)
    problems: list[str] = []
    for p in a11y.PAGES:
        page = signed_in if p.login else anonymous
        await page.goto(portal.url + p.path.format(**data))
        assert page.url.startswith(portal.url + p.path.format(**data).partition("?")[0]), (p.name, page.url)
        if p.route == "(404)":  # the portal's own page, not aiohttp's bare text
            assert await page.get_by_role("alert").inner_text() == "Cette page n'existe pas."
        problems += await a11y.check(page, p.name)
    assert problems == [], "\n".join(problems)
