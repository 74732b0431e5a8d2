"""Quota accounting, limits inheritance and warnings (once per crossing), on both engines."""

from __future__ import annotations

import email

from mailserver import accounts
from mailserver.runtime import Runtime


def message(size: int) -> bytes:
    return b"From: a@b.mssante.test\r\nSubject: x\r\n\r\n" + b"y" * size + b"\r\n"


async def inbox_subjects(rt: Runtime, mailbox_id: int) -> list[str]:
    folder = await rt.store.folder(mailbox_id, "INBOX")
    _, msgs = await rt.store.snapshot(folder.id)
    subjects = []
    for m in msgs:
        parsed = email.message_from_bytes(await rt.store.read_blob(m.blob_id))
        subjects.append(str(email.header.make_header(email.header.decode_header(parsed["Subject"]))))
    return subjects


async def test_limits_inherit_mailbox_then_domain_then_server(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "a@a.mssante.test", "ORG")
    (line,) = await accounts.quota_lines(runtime, mb.address)
    assert line.storage == runtime.settings.quota.default_storage
    await accounts.set_domain_quota(runtime, "a.mssante.test", 5_000_000, 100)
    (line,) = await accounts.quota_lines(runtime, mb.address)
    assert (line.storage, line.messages) == (5_000_000, 100)
    line = await accounts.set_mailbox_quota(runtime, mb.address, 1_000, None)
    assert (line.storage, line.messages) == (1_000, 100)
    line = await accounts.set_mailbox_quota(runtime, mb.address, 0, 0)
    assert (line.storage, line.messages) == (0, 0)


async def test_warnings_once_per_crossing(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "w@a.mssante.test", "ORG", quota_storage=10_000)
    store = runtime.store
    await store.deliver(await store.prepare(message(5_000)), [mb.id])
    assert await inbox_subjects(runtime, mb.id) == ["x"]

    await store.deliver(await store.prepare(message(3_200)), [mb.id])  # ~83 %: crosses 80 %
    subjects = await inbox_subjects(runtime, mb.id)
    assert subjects[-1] == "Votre boîte aux lettres est remplie à 80 %"
    notices = len(subjects)

    await store.deliver(await store.prepare(message(10)), [mb.id])  # still between 80 and 95: no repeat
    assert len(await inbox_subjects(runtime, mb.id)) == notices + 1
    later = (await inbox_subjects(runtime, mb.id))[notices:]
    assert "Votre boîte aux lettres est remplie à 80 %" not in later

    # Freed below 80 %, then crossing again warns again.
    inbox = await store.folder(mb.id, "INBOX")
    await store.set_flags(inbox.id, [1], "add", {"\\Deleted"})
    await store.expunge(inbox.id)
    await store.deliver(await store.prepare(message(4_000)), [mb.id])
    assert (await inbox_subjects(runtime, mb.id)).count("Votre boîte aux lettres est remplie à 80 %") == 2


async def test_lowering_a_limit_warns_at_once(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "l@a.mssante.test", "ORG")
    await runtime.store.deliver(await runtime.store.prepare(message(9_700)), [mb.id])
    await accounts.set_mailbox_quota(runtime, mb.address, 10_000, None)
    assert (await inbox_subjects(runtime, mb.id))[-1] == "Votre boîte aux lettres est remplie à 95 %"


async def test_recount_finds_and_fixes_drift(runtime: Runtime) -> None:
    mb = await accounts.add_mailbox(runtime, "r@a.mssante.test", "ORG")
    await runtime.store.deliver(await runtime.store.prepare(message(100)), [mb.id])
    (result,) = await accounts.recount_usage(runtime, mb.address)
    assert result[1] == result[2]
    async with runtime.db.write() as session:
        from mailserver.db.models import Mailbox

        row = await session.get(Mailbox, mb.id)
        assert row is not None
        row.used_bytes += 12345
    (result,) = await accounts.recount_usage(runtime, mb.address)
    assert result[1][0] == result[2][0] + 12345
    (line,) = await accounts.quota_lines(runtime, mb.address)
    assert line.used_bytes == result[2][0]
