"""Accessibility harness for the portal's pages: axe-core in the real browser, and a 320 px check.

axe-core comes from the npm registry (``tests/portal/node/package.json``, installed by
``scripts/bootstrap`` with ``npm ci``). It is evaluated in the page through the DevTools protocol, so the
pages keep their strict Content-Security-Policy (no script may load; axe is not one of the page's).

Every portal HTML page is listed once in ``PAGES``; ``test_accessibility.py`` checks that the list
covers every GET route of the router, so a page added later fails until it gets its one line here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Page

AXE = Path(__file__).parent / "node" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
NARROW = 320


@dataclass(frozen=True)
class PortalPage:
    """One page to check: ``path`` may name ``{conversation}`` or ``{file}`` (filled by the test's
    data); ``login``: visited signed in; ``route``: the router path it stands for (default ``path``)."""

    name: str
    path: str
    login: bool = True
    route: str = ""

    @property
    def covers(self) -> str:
        return self.route or self.path


PAGES = [
    PortalPage("connexion", "/connexion", login=False),
    PortalPage("activation", "/activation", login=False),
    PortalPage("mot de passe oublié", "/mot-de-passe-oublie", login=False),
    PortalPage("conversations", "/conversations"),
    PortalPage("conversation", "/conversations/{conversation}", route="/conversations/{id}"),
    PortalPage("nouveau message", "/nouveau-message"),
    PortalPage(
        "nouveau message, recherche vide", "/nouveau-message?recherche=zzzz", route="/nouveau-message"
    ),
    PortalPage("paramètres", "/parametres"),
    PortalPage("fichier à télécharger", "/fichiers/{file}", route="/fichiers/{id}"),
    PortalPage("fichier : lien inconnu", "/fichiers/" + "0" * 32, route="/fichiers/{id}"),
    PortalPage("fichier : hors session", "/fichiers/{file}", login=False, route="/fichiers/{id}"),
    PortalPage("erreur : conversation inconnue", "/conversations/inconnue", route="/conversations/{id}"),
    PortalPage("erreur : page inconnue", "/page-inconnue", route="(404)"),
    PortalPage("erreur : page inconnue, hors session", "/page-inconnue", login=False, route="(404)"),
]

# Pages reached only inside a flow. The second-factor pages (the fixture of this list turns the second
# factor off): tests/portal/test_second_factor.py runs ``check`` on each where it walks them.
FLOW_PAGES = ("/connexion/code", "/mot-de-passe-oublie/code", "/parametres/application")

# GET routes that are not HTML pages: redirects, files, JSON, XML.
NOT_PAGES = (
    "/",
    "/favicon.ico",
    "/messages/{mid}/pieces-jointes/{n}",
    "/messages/{mid}/apercus/{n}",
    "/fichiers/{id}/telecharger",  # a large file's bytes
    "/.well-known/autoconfig/mail/config-v1.1.xml",
    "/mail/config-v1.1.xml",
)


def axe_source() -> str:
    if not AXE.is_file():
        raise AssertionError(f"{AXE} is missing: run scripts/bootstrap (npm ci in tests/portal/node)")
    return AXE.read_text(encoding="utf-8")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(axe_source())
    result = await page.evaluate("async () => await window.axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v.get("impact") in BLOCKING]


async def narrow_problems(page: Page) -> list[str]:
    """At 320 px: no horizontal scroll, and every form control visible inside the viewport."""
    size = page.viewport_size or {"width": 1024, "height": 768}
    await page.set_viewport_size({"width": NARROW, "height": size["height"]})
    try:
        problems = []
        scroll = await page.evaluate("() => document.documentElement.scrollWidth")
        if scroll > NARROW:
            problems.append(f"horizontal scroll: scrollWidth {scroll} > {NARROW}")
        controls = page.locator("input:not([type=hidden]), select, textarea, button")
        for i in range(await controls.count()):
            control = controls.nth(i)
            box = await control.bounding_box()
            what = await control.evaluate("e => e.outerHTML.slice(0, 80)")
            if box is None or not await control.is_visible():
                problems.append(f"not visible: {what}")
            elif box["x"] < 0 or box["x"] + box["width"] > NARROW + 0.5:
                problems.append(f"outside the {NARROW} px viewport: {what} ({box})")
        return problems
    finally:
        await page.set_viewport_size(size)


async def check(page: Page, name: str) -> list[str]:
    """Every accessibility problem of the page now shown, as lines naming the page (empty: none)."""
    out = [
        f"{name}: axe {v['id']} ({v['impact']}): {v['help']} — "
        + json.dumps([n["target"] for n in v["nodes"]][:5], ensure_ascii=False)
        for v in await axe_violations(page)
    ]
    out += [f"{name}: {p}" for p in await narrow_problems(page)]
    return out
