"""Trust list: import of the published XML (all or nothing), manual entries, DN comparison, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from mailserver import trust
from mailserver.runtime import Runtime

SAMPLE = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "directory" / "listeblanchemssante.xml"
)
NS = "https://listeblanche.mssante.fr/schema"


def xml(*domains: tuple[str, str]) -> bytes:
    blocks = "".join(
        f"<Domaine><Nom>{n}</Nom><Description>d {n}</Description>"
        f"<DNCertificatOperateur>{dn}</DNCertificatOperateur><DateMAJ>2026-11-01</DateMAJ></Domaine>"
        for n, dn in domains
    )
    return f'<?xml version="1.0"?><ListeBlanche xmlns="{NS}">{blocks}</ListeBlanche>'.encode()


def test_sample_file_parses() -> None:
    entries = trust.parse_trust_list(SAMPLE.read_bytes())
    assert len(entries) == 9
    chu = next(e for e in entries if e.name == "chu-nord.mssante.test")
    assert chu.dn.startswith("CN=mx.chu-nord.mssante.test,")
    assert chu.support_contact == "support@chu-nord.mssante.test"
    assert chu.updated == "2026-11-01"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"<ListeBlanche", "not well-formed"),
        (b"<ListeBlanche/>", "namespace"),
        (xml(), "no <Domaine>"),
        (xml(("a.test", "not a dn")), "invalid DN"),
        (xml(("bad domain!", "CN=x")), "invalid domain"),
        (xml(("a.test", "CN=x"), ("A.test", "CN=y")), "listed twice"),
        (xml(("a.test", "")), "missing <DNCertificatOperateur>"),
    ],
)
def test_malformed_lists_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(trust.TrustListError, match=why):
        trust.parse_trust_list(data)


def test_dn_comparison_is_by_name_not_by_string() -> None:
    subject = x509.Name.from_rfc4514_string("CN=mx.a.mssante.test,OU=Operateur,O=Operateur A,C=FR")
    assert trust.dn_matches("CN=mx.a.mssante.test,OU=Operateur,O=Operateur A,C=FR", subject)
    assert trust.dn_matches("cn=MX.A.MSSANTE.TEST, ou=operateur, o=Operateur  A, c=fr", subject)
    assert trust.dn_matches("C=FR,O=Operateur A,OU=Operateur,CN=mx.a.mssante.test", subject)
    assert trust.dn_matches("CN=mx.a.mssante.test,OU=Operateur,O=Operateur\\20A,C=FR", subject)
    assert not trust.dn_matches("CN=mx.a.mssante.test,OU=Operateur,O=Operateur B,C=FR", subject)
    assert not trust.dn_matches("CN=mx.a.mssante.test,O=Operateur A,C=FR", subject)
    assert not trust.dn_matches("garbage", subject)


def test_pki_subjects_match_their_own_rfc4514_form(pki: Any) -> None:
    a = pki.tls["a.mssante.test"]
    assert trust.dn_matches(a.subject, a.cert.subject)
    assert trust.dn_matches(a.subject, pki.tls_impostor.cert.subject)  # same name: only the CA differs
    assert not trust.dn_matches(pki.tls["b.mssante.test"].subject, a.cert.subject)


async def test_import_replace_and_report(runtime: Runtime, tmp_path: Path) -> None:
    report = await trust.import_file(runtime.db, SAMPLE)
    assert len(report.added) == 9 and not report.removed and not report.changed
    again = await trust.import_file(runtime.db, SAMPLE)
    assert (again.added, again.removed, again.changed, again.unchanged) == ([], [], [], 9)
    f = tmp_path / "new.xml"
    f.write_bytes(
        xml(("chu-nord.mssante.test", "CN=mx2.chu-nord.mssante.test,C=FR"), ("new.mssante.test", "CN=n"))
    )
    third = await trust.import_file(runtime.db, f)
    assert third.added == ["new.mssante.test"]
    assert third.changed == ["chu-nord.mssante.test"]
    assert len(third.removed) == 8
    assert [e.name for e in await trust.entries(runtime.db)] == ["chu-nord.mssante.test", "new.mssante.test"]


async def test_malformed_file_changes_nothing(runtime: Runtime, tmp_path: Path) -> None:
    await trust.import_file(runtime.db, SAMPLE)
    bad = tmp_path / "bad.xml"
    bad.write_bytes(SAMPLE.read_bytes().replace(b"</ListeBlanche>", b""))
    with pytest.raises(trust.TrustListError, match="not well-formed"):
        await trust.import_file(runtime.db, bad)
    assert len(await trust.entries(runtime.db)) == 9


async def test_manual_add_remove_and_peer_check(runtime: Runtime, pki: Any) -> None:
    b = pki.tls["b.mssante.test"]
    await trust.add(runtime.db, "B.mssante.test.", b.subject)
    async with runtime.db.read() as session:
        assert await trust.check_peer(session, "b.mssante.test", b.cert.subject) is None
        assert "not the one listed" in (
            await trust.check_peer(session, "b.mssante.test", pki.tls["a.mssante.test"].cert.subject) or ""
        )
        assert "no client certificate" in (await trust.check_peer(session, "b.mssante.test", None) or "")
        assert "not in the MSSanté trust space" in (
            await trust.check_peer(session, "c.mssante.test", b.cert.subject) or ""
        )
        assert await trust.domains_of(session, b.cert.subject) == ["b.mssante.test"]
    await trust.remove(runtime.db, "b.mssante.test")
    with pytest.raises(trust.TrustListError):
        await trust.remove(runtime.db, "b.mssante.test")
    with pytest.raises(trust.TrustListError):
        await trust.add(runtime.db, "b.mssante.test", "no equals sign")


def test_cli_import_list_add_remove(tmp_path: Path) -> None:
    from cli import main
    from mailserver.db import migrate

    cfg = tmp_path / "caducee.toml"
    cfg.write_text(
        f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/c.db"\n[storage]\npath = "{tmp_path}/store"\n'
    )
    migrate.upgrade(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    runner = CliRunner()
    out = runner.invoke(main, ["--config", str(cfg), "trust", "import", str(SAMPLE)])
    assert out.exit_code == 0, out.output
    assert "added    chu-nord.mssante.test" in out.output and "9 added" in out.output
    bad = tmp_path / "bad.xml"
    bad.write_text("<nope/>")
    out = runner.invoke(main, ["--config", str(cfg), "trust", "import", str(bad)])
    assert out.exit_code == 1 and "unchanged" in out.output
    out = runner.invoke(
        main, ["--config", str(cfg), "trust", "add", "x.mssante.test", "--dn", "CN=mx.x,C=FR"]
    )
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["--config", str(cfg), "trust", "remove", "chu-nord.mssante.test"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["--config", str(cfg), "trust", "list", "--json"])
    names = [e["name"] for e in json.loads(out.output)]
    assert "x.mssante.test" in names and "chu-nord.mssante.test" not in names and len(names) == 9
