"""Retired directory mailboxes over SMTP: two daily imports retire an address, and RCPT to it gets the
precise 550 5.1.6 (on the MTA and on submission) instead of the 550 5.1.1 of an address never listed."""

from __future__ import annotations

from pathlib import Path

from directory.importer import import_extraction
from tests.integration.conftest import peer_b, submitter
from tests.smtp.conftest import MARTIN, SMTPEnv

SAMPLE = Path("/work/shared/data/directory/Extraction_Correspondance_MSSante_202611220400.txt")
RETIRED = "dr.parti@a.mssante.test"
DISABLED = "ancien@a.mssante.test"  # a disabled mailbox of the SMTP fixture
STAYING = "dr.reste@a.mssante.test"


def extraction(path: Path, addresses: list[str]) -> Path:
    """The published header and one PER row (copied from the sample) per address."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    header = lines[0]
    per = next(line for line in lines[1:] if line.startswith("PER|")).split("|")
    rows = ["|".join([per[0], address, *per[2:]]) for address in addresses]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


async def retire(env: SMTPEnv, tmp_path: Path) -> None:
    day1 = extraction(
        tmp_path / "Extraction_Correspondance_MSSante_202611220400.txt", [RETIRED, DISABLED, STAYING]
    )
    first = await import_extraction(env.rt.db, day1)
    assert (first.added, first.retired) == (3, 0)
    day2 = extraction(tmp_path / "Extraction_Correspondance_MSSante_202611230400.txt", [STAYING])
    assert (await import_extraction(env.rt.db, day2)).retired == 2


async def test_retired_address_is_550_5_1_6_on_the_mta(smtp_env: SMTPEnv, tmp_path: Path) -> None:
    raw = await peer_b(smtp_env)
    assert (await raw.cmd("MAIL FROM:<dr.durand@b.mssante.test>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{RETIRED}>")).startswith("550 5.1.1")
    await retire(smtp_env, tmp_path)
    assert (await raw.cmd(f"RCPT TO:<{RETIRED}>")).startswith("550 5.1.6")
    assert (await raw.cmd(f"RCPT TO:<{DISABLED}>")).startswith("550 5.1.6")
    assert (await raw.cmd(f"RCPT TO:<{STAYING}>")).startswith("550 5.1.1")
    assert (await raw.cmd("RCPT TO:<jamais.vu@a.mssante.test>")).startswith("550 5.1.1")
    assert (await raw.cmd(f"RCPT TO:<{MARTIN}>")).startswith("250")
    await raw.close()
    refused = await smtp_env.rt.audit.events(action="mta-refused")
    assert any(RETIRED in e.request and "5.1.6" in e.response for e in refused)


async def test_retired_address_is_550_5_1_6_on_submission(sqlite_env: SMTPEnv, tmp_path: Path) -> None:
    await retire(sqlite_env, tmp_path)
    raw = await submitter(sqlite_env, MARTIN)
    assert (await raw.cmd(f"MAIL FROM:<{MARTIN}>")).startswith("250")
    assert (await raw.cmd(f"RCPT TO:<{RETIRED}>")).startswith("550 5.1.6")
    assert (await raw.cmd("RCPT TO:<jamais.vu@a.mssante.test>")).startswith("550 5.1.1")
    await raw.close()
