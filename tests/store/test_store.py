"""The store's invariants: durable blobs before rows, UIDs and MODSEQs, flags, usage, folders.

Every test runs on SQLite and on PostgreSQL (``runtime`` is parametrised through ``db_url``).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from mailserver import accounts, quota
from mailserver.db.models import Blob, MemberFlags, Message
from mailserver.runtime import Runtime
from mailserver.store import queries
from mailserver.store.store import FolderExists, FolderNotFound, StoreError, Viewer, drop_blob_ref


def message(n: int, size: int = 0) -> bytes:
    body = (b"x" * size) or f"body {n}".encode()
    return (
        (
            f"From: sender@b.mssante.test\r\nTo: dr.martin@a.mssante.test\r\nSubject: message {n}\r\n"
            f"Message-ID: <{n}@b.mssante.test>\r\n\r\n"
        ).encode()
        + body
        + b"\r\n"
    )


async def mailbox(rt: Runtime, local: str = "dr.martin", **kw: object) -> int:
    mb = await accounts.add_mailbox(rt, f"{local}@a.mssante.test", "ORG", **kw)  # type: ignore[arg-type]
    return mb.id


@pytest.fixture
def files_only(runtime: Runtime) -> None:
    """Every message kept as a file (``[storage] inline_max = 0``): what these tests check is files."""
    runtime.store.inline_max = 0


async def blob_count(rt: Runtime) -> int:
    async with rt.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(Blob))).scalar_one())


async def test_default_folders_with_special_use(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    folders = {f.name: f.special_use for f in await runtime.store.folders(mb)}
    assert folders == {
        "INBOX": None,
        "Sent": "\\Sent",
        "Drafts": "\\Drafts",
        "Trash": "\\Trash",
        "Junk": "\\Junk",
        "Archive": "\\Archive",
    }
    validities = [f.uidvalidity for f in await runtime.store.folders(mb)]
    assert len(set(validities)) == len(validities)


async def test_blob_is_complete_on_disk_before_its_row_commits(runtime: Runtime) -> None:
    """``prepare`` returns only after the file is fsync'ed; no row exists until ``deliver`` commits."""
    mb = await mailbox(runtime)
    data = message(1, 200_000)
    prepared = await runtime.store.prepare(data)
    path = runtime.blobs.root / prepared.written.path
    assert path.read_bytes() == data
    assert await blob_count(runtime) == 0
    result = await runtime.store.deliver(prepared, [mb])
    assert result.uids == {mb: 1}
    async with runtime.db.read() as session:
        row = (await session.execute(select(Blob))).scalar_one()
    assert row.path == prepared.written.path and row.size == len(data) and row.refcount == 1
    assert await runtime.store.read_blob(row.id) == data


async def test_small_message_is_kept_in_its_row(runtime: Runtime) -> None:
    """Up to ``[storage] inline_max`` a message is in its blob row (durable with the delivery's commit),
    with no file; a larger one is a file. Reading, counting and freeing treat both alike."""
    mb = await mailbox(runtime)
    small = message(1)
    runtime.store.inline_max = len(small)
    prepared = await runtime.store.prepare(small)
    assert prepared.written.path is None and list(runtime.blobs.all_paths()) == []
    await runtime.store.deliver(prepared, [mb])
    large = message(2, len(small))
    await runtime.store.deliver(await runtime.store.prepare(large), [mb])
    async with runtime.db.read() as session:
        rows = (await session.execute(select(Blob.id, Blob.path, Blob.data).order_by(Blob.id))).all()
    (inline_id, inline_path, inline_data), (file_id, file_path, file_data) = rows
    assert inline_path is None and bytes(inline_data) == small
    assert file_data is None and list(runtime.blobs.all_paths()) == [file_path]
    assert await runtime.store.read_blob(inline_id) == small
    assert await runtime.store.read_blob(file_id) == large
    assert (await runtime.store.usage(mb))[0].bytes == len(small) + len(large)
    assert await runtime.store.missing_blobs() == []
    assert await runtime.store.collect_orphans(older_than=0) == []
    await accounts.delete_mailbox(runtime, "dr.martin@a.mssante.test")
    assert await blob_count(runtime) == 0 and list(runtime.blobs.all_paths()) == []


async def test_deliveries_committed_together_keep_their_own_content(runtime: Runtime) -> None:
    """A group commit inserts several blobs at once: each delivery's UID must lead to its own bytes."""
    mb = await mailbox(runtime)
    datas = [message(n) for n in range(8)]
    prepared = [await runtime.store.prepare(d) for d in datas]
    results = await asyncio.gather(*(runtime.store.deliver(p, [mb]) for p in prepared))
    inbox = await runtime.store.folder(mb, "INBOX")
    infos = {m.uid: m for m in await runtime.store.messages(inbox.id, [r.uids[mb] for r in results])}
    for data, result in zip(datas, results, strict=True):
        info = infos[result.uids[mb]]
        assert info.blob_id == result.blob_id
        assert await runtime.store.read_blob(info.blob_id) == data


@pytest.mark.usefixtures("files_only")
async def test_failed_delivery_leaves_no_row_and_no_file(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    prepared = await runtime.store.prepare(message(1))
    with pytest.raises(FolderNotFound):
        await runtime.store.deliver(prepared, [mb], folder="Nope")
    assert await blob_count(runtime) == 0
    assert not (runtime.blobs.root / prepared.written.path).exists()


async def test_one_blob_shared_by_all_local_recipients(runtime: Runtime) -> None:
    a, b, c = await mailbox(runtime, "a"), await mailbox(runtime, "b"), await mailbox(runtime, "c")
    result = await runtime.store.deliver(await runtime.store.prepare(message(1)), [a, b, c])
    assert set(result.uids) == {a, b, c}
    assert await blob_count(runtime) == 1
    async with runtime.db.read() as session:
        assert (await session.execute(select(Blob.refcount))).scalar_one() == 3


async def test_uids_increase_and_modseq_rises_with_every_change(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    uids = []
    for n in range(3):
        uids.append((await runtime.store.deliver(await runtime.store.prepare(message(n)), [mb])).uids[mb])
    assert uids == [1, 2, 3]
    f, msgs = await runtime.store.snapshot(inbox.id)
    assert f.uidnext == 4
    assert [m.modseq for m in msgs] == sorted(m.modseq for m in msgs)
    before = f.highestmodseq

    change = await runtime.store.set_flags(inbox.id, [2], "add", {"\\Seen", "$Label1"})
    assert [m.uid for m in change.changed] == [2]
    assert change.changed[0].flags == frozenset({"\\Seen", "$Label1"})
    assert change.changed[0].modseq == before + 1
    f, _ = await runtime.store.snapshot(inbox.id)
    assert f.highestmodseq == before + 1

    # No actual change: MODSEQ must not move (RFC 7162 §3.1.3).
    again = await runtime.store.set_flags(inbox.id, [2], "add", {"\\Seen"})
    assert again.changed == [] and (await runtime.store.snapshot(inbox.id))[0].highestmodseq == before + 1

    # UNCHANGEDSINCE older than the message's MODSEQ: refused for that message only.
    cond = await runtime.store.set_flags(inbox.id, [1, 2], "add", {"\\Flagged"}, unchangedsince=before)
    assert cond.modified == [2] and [m.uid for m in cond.changed] == [1]

    await runtime.store.set_flags(inbox.id, [1, 3], "add", {"\\Deleted"})
    assert await runtime.store.expunge(inbox.id) == [1, 3]
    f, msgs = await runtime.store.snapshot(inbox.id)
    assert [m.uid for m in msgs] == [2]
    _, changed, vanished = await runtime.store.changes_since(inbox.id, before)
    assert vanished == [1, 3]
    assert [m.uid for m in changed] == [2]

    # Nothing since the current HIGHESTMODSEQ; each kind of change moves it, so none is missed.
    f, _ = await runtime.store.snapshot(inbox.id)
    assert (await runtime.store.changes_since(inbox.id, f.highestmodseq))[1:] == ([], [])

    # UIDs are never reused: the next delivery gets 4, not 1 or 3.
    assert (await runtime.store.deliver(await runtime.store.prepare(message(9)), [mb])).uids[mb] == 4
    _, changed, _ = await runtime.store.changes_since(inbox.id, f.highestmodseq)
    assert [m.uid for m in changed] == [4]
    archive = await runtime.store.folder(mb, "Archive")
    await runtime.store.copy(inbox.id, [2], "Archive")
    mark = (await runtime.store.snapshot(inbox.id))[0].highestmodseq
    await runtime.store.copy(archive.id, [1], "INBOX")
    _, changed, _ = await runtime.store.changes_since(inbox.id, mark)
    assert [m.uid for m in changed] == [5]


async def test_uid_expunge_only_touches_named_uids(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    for n in range(3):
        await runtime.store.deliver(await runtime.store.prepare(message(n)), [mb])
    await runtime.store.set_flags(inbox.id, [1, 2, 3], "add", {"\\Deleted"})
    assert await runtime.store.expunge(inbox.id, [2]) == [2]
    assert [m.uid for m in (await runtime.store.snapshot(inbox.id))[1]] == [1, 3]


@pytest.mark.usefixtures("files_only")
async def test_usage_after_deliver_copy_move_expunge(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    store = runtime.store
    inbox = await store.folder(mb, "INBOX")
    sizes = []
    for n in range(3):
        data = message(n, 1000 * (n + 1))
        sizes.append(len(data))
        await store.deliver(await store.prepare(data), [mb])
    usage, _ = await store.usage(mb)
    assert usage == quota.Usage(sum(sizes), 3)

    # A copy in the same mailbox shares the blob: counted once in bytes, twice in messages.
    validity, pairs = await store.copy(inbox.id, [1, 2], "Archive")
    archive = await store.folder(mb, "Archive")
    assert validity == archive.uidvalidity and pairs == [(1, 1), (2, 2)]
    usage, _ = await store.usage(mb)
    assert usage == quota.Usage(sum(sizes), 5)

    # Expunging one of two copies frees no bytes; expunging the last one does.
    await store.set_flags(inbox.id, [1], "add", {"\\Deleted"})
    await store.expunge(inbox.id)
    assert (await store.usage(mb))[0] == quota.Usage(sum(sizes), 4)
    await store.set_flags(archive.id, [1], "add", {"\\Deleted"})
    await store.expunge(archive.id)
    assert (await store.usage(mb))[0] == quota.Usage(sizes[1] + sizes[2], 3)

    # MOVE changes nothing in usage and leaves a tombstone in the source.
    _, moved = await store.copy(inbox.id, [3], "Trash", move=True)
    assert moved == [(3, 1)]
    assert (await store.usage(mb))[0] == quota.Usage(sizes[1] + sizes[2], 3)
    _, _, vanished = await store.changes_since(inbox.id, 0)
    assert 3 in vanished

    # MOVE into the folder itself (RFC 6851 §3.3: COPY then EXPUNGE): new UIDs, old ones vanished.
    before = await store.folder(mb, "INBOX")
    validity, moved = await store.copy(inbox.id, [2], "INBOX", move=True)
    assert validity == before.uidvalidity and moved == [(2, before.uidnext)]
    info, changed, vanished = await store.changes_since(inbox.id, before.highestmodseq)
    assert [m.uid for m in changed] == [before.uidnext] and vanished == [2]
    assert info.uidnext == before.uidnext + 1
    assert (await store.usage(mb))[0] == quota.Usage(sizes[1] + sizes[2], 3)

    # The counters match a recount from the rows, and unreferenced blob files are gone.
    before, recomputed = await store.recount(mb)
    assert before == recomputed
    async with runtime.db.read() as session:
        paths = set((await session.execute(select(Blob.path))).scalars())
    assert set(runtime.blobs.all_paths()) == paths


@pytest.mark.usefixtures("files_only")
async def test_quota_refuses_append_and_copy_and_changes_nothing(runtime: Runtime) -> None:
    mb = await mailbox(runtime, quota_storage=5000)
    store = runtime.store
    inbox = await store.folder(mb, "INBOX")
    await store.append(mb, "INBOX", [(message(1, 3000), [], None)])
    with pytest.raises(quota.OverQuota) as exc:
        await store.append(mb, "INBOX", [(message(2, 3000), [], None)])
    assert exc.value.resource == "STORAGE"
    f, msgs = await store.snapshot(inbox.id)
    assert len(msgs) == 1 and f.uidnext == 2
    assert await blob_count(runtime) == 1
    assert len(list(runtime.blobs.all_paths())) == 1
    # Copy within the mailbox adds no bytes, so it fits.
    await store.copy(inbox.id, [1], "Archive")

    limited = await mailbox(runtime, "limited", quota_messages=1)
    await store.append(limited, "INBOX", [(message(3), [], None)])
    with pytest.raises(quota.OverQuota) as exc:
        await store.copy((await store.folder(limited, "INBOX")).id, [1], "Archive")
    assert exc.value.resource == "MESSAGE"


async def test_delivery_refuses_only_the_full_mailbox(runtime: Runtime) -> None:
    full = await mailbox(runtime, "full", quota_storage=100)
    ok = await mailbox(runtime, "ok")
    result = await runtime.store.deliver(await runtime.store.prepare(message(1, 500)), [full, ok])
    assert result.uids == {ok: 1} and result.over_quota == {full: "STORAGE"}


@pytest.mark.usefixtures("files_only")
async def test_parallel_deliveries_never_overrun_a_quota(runtime: Runtime) -> None:
    data = message(1, 1000)
    mb = await mailbox(runtime, quota_storage=len(data) * 5 + 10)
    prepared = [await runtime.store.prepare(data) for _ in range(12)]
    results = await asyncio.gather(*(runtime.store.deliver(p, [mb]) for p in prepared))
    accepted = sum(1 for r in results if mb in r.uids)
    assert accepted == 5
    usage, limits = await runtime.store.usage(mb)
    _, msgs = await runtime.store.snapshot((await runtime.store.folder(mb, "INBOX")).id)
    delivered = [m for m in msgs if m.size == len(data)]
    notices = [m for m in msgs if m.size != len(data)]  # the 80 % and 95 % warnings, exempt from quota
    # Usage jumps past 80 % and 95 % within one group commit or two: one or two notices, never more.
    assert len(delivered) == 5 and 1 <= len(notices) <= 2
    assert sum(m.size for m in delivered) <= limits.storage
    assert usage.messages == len(msgs) and usage.bytes == sum(m.size for m in msgs)
    assert len(list(runtime.blobs.all_paths())) == len(msgs)


async def test_folders_create_rename_delete(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    store = runtime.store
    created = await store.create_folder(mb, "Projets/2026/Janvier")
    names = {f.name for f in await store.folders(mb)}
    assert {"Projets", "Projets/2026", "Projets/2026/Janvier"} <= names
    with pytest.raises(FolderExists):
        await store.create_folder(mb, "Projets")
    with pytest.raises(FolderExists):
        await store.create_folder(mb, "inbox")

    await store.append(mb, "Projets/2026/Janvier", [(message(1), ["\\Seen"], None)])
    await store.rename_folder(mb, "Projets", "Anciens")
    renamed = await store.folder(mb, "Anciens/2026/Janvier")
    assert renamed.id == created.id and renamed.uidvalidity == created.uidvalidity
    with pytest.raises(FolderNotFound):
        await store.folder(mb, "Projets")

    # Renaming INBOX moves its messages into a new folder and leaves INBOX empty (RFC 9051 §6.3.6).
    await store.deliver(await store.prepare(message(2)), [mb])
    await store.rename_folder(mb, "INBOX", "Old")
    assert (await store.snapshot((await store.folder(mb, "INBOX")).id))[1] == []
    assert len((await store.snapshot((await store.folder(mb, "Old")).id))[1]) == 1

    with pytest.raises(StoreError):
        await store.delete_folder(mb, "INBOX")
    usage_before, _ = await store.usage(mb)
    await store.delete_folder(mb, "Anciens/2026/Janvier")
    usage_after, _ = await store.usage(mb)
    assert usage_after.messages == usage_before.messages - 1


async def test_folder_limits_hold_for_every_caller(runtime: Runtime) -> None:
    """``[limits] folder_*`` are checked in the store, so any path that makes folders is bounded;
    concurrent creations serialise on the mailbox lock and never pass the count."""
    limits = runtime.settings.limits
    limits.folders_per_mailbox, limits.folder_depth, limits.folder_name_length = 9, 3, 12
    mb = await mailbox(runtime)
    store = runtime.store
    for name, code in [("a/b/c/d", "LIMIT"), ("x" * 13, "LIMIT"), ("é" * 7, "LIMIT"), ("a*", "CANNOT")]:
        with pytest.raises(StoreError) as info:
            await store.create_folder(mb, name)
        assert info.value.code == code, name
    for bad in ("a\x85b", "a\udc80", "/a", "a//b", "a/"):
        with pytest.raises(StoreError):
            await store.create_folder(mb, bad)
    await store.create_folder(mb, "é" * 6)
    with pytest.raises(StoreError) as info:
        await store.create_folder(mb, "p/q/r")  # 7 folders + 3 new > 9: nothing is created
    assert info.value.code == "LIMIT" and len(await store.folders(mb)) == 7
    results = await asyncio.gather(
        *(store.create_folder(mb, f"n{i}") for i in range(8)), return_exceptions=True
    )
    assert sum(1 for r in results if isinstance(r, StoreError) and r.code == "LIMIT") == 6
    assert len(await store.folders(mb)) == 9
    with pytest.raises(StoreError) as info:
        await store.rename_folder(mb, "INBOX", "Old")  # a rename that adds a folder
    assert info.value.code == "LIMIT"


async def test_subscriptions_are_names_that_outlive_their_folder(runtime: Runtime) -> None:
    """RFC 3501 §6.3.6: deleting a folder keeps its subscription; renaming moves the subtree's."""
    mb = await mailbox(runtime)
    store = runtime.store
    await store.create_folder(mb, "A/B")
    await store.subscribe(mb, "A", False)
    await store.rename_folder(mb, "A", "C")
    await store.delete_folder(mb, "C/B")
    folders, subscribed = await store.listing(mb)
    assert {"C", "C/B"} & {f.name for f in folders} == {"C"}
    assert "C/B" in subscribed and "C" not in subscribed and not {"A", "A/B"} & subscribed
    with pytest.raises(FolderNotFound):
        await store.subscribe(mb, "Nowhere", True)
    await store.subscribe(mb, "C/B", False)
    with pytest.raises(FolderNotFound):
        await store.subscribe(mb, "C/B", False)


async def test_notification_after_commit(runtime: Runtime) -> None:
    """A listener hears about a delivery, and only once it is visible to readers."""
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    heard = asyncio.Event()
    seen_uids: list[int] = []

    def on_change(mailbox_id: int, folder_id: int | None) -> None:
        assert mailbox_id == mb and folder_id == inbox.id
        heard.set()

    unsubscribe = runtime.notifier.subscribe(mb, on_change)
    if runtime.db.kind == "postgresql":
        task = asyncio.create_task(
            runtime.notifier.listen_postgres(runtime.settings.database.url.replace("+asyncpg", ""))
        )
        await asyncio.wait_for(runtime.notifier.listening.wait(), 10)
    try:
        await runtime.store.deliver(await runtime.store.prepare(message(1)), [mb])
        async with asyncio.timeout(5):
            await heard.wait()
        seen_uids = [m.uid for m in (await runtime.store.snapshot(inbox.id))[1]]
    finally:
        unsubscribe()
        if runtime.db.kind == "postgresql":
            task.cancel()
    assert seen_uids == [1]


@pytest.mark.usefixtures("files_only")
async def test_mailbox_delete_removes_mail_and_files(runtime: Runtime) -> None:
    mb = await mailbox(runtime)
    other = await mailbox(runtime, "other")
    await runtime.store.deliver(await runtime.store.prepare(message(1)), [mb, other])
    await runtime.store.deliver(await runtime.store.prepare(message(2)), [mb])
    await accounts.delete_mailbox(runtime, "dr.martin@a.mssante.test")
    async with runtime.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Message))).scalar_one() == 1
    assert len(list(runtime.blobs.all_paths())) == 1
    (remaining,) = runtime.blobs.all_paths()
    assert await asyncio.to_thread(runtime.blobs.read, remaining) == message(1)


@pytest.mark.usefixtures("files_only")
async def test_orphan_files_are_collected_only_when_old(runtime: Runtime) -> None:
    """A crash between blob write and commit leaves an orphan file, never a row without a file."""
    mb = await mailbox(runtime)
    await runtime.store.deliver(await runtime.store.prepare(message(1)), [mb])
    orphan = await runtime.store.prepare(message(2))  # written, never committed: as after a crash
    assert await runtime.store.missing_blobs() == []
    assert await runtime.store.collect_orphans(older_than=3600) == []
    assert await runtime.store.collect_orphans(older_than=0, dry_run=True) == [orphan.written.path]
    assert (runtime.blobs.root / orphan.written.path).exists()
    assert await runtime.store.collect_orphans(older_than=0) == [orphan.written.path]
    assert not (runtime.blobs.root / orphan.written.path).exists()
    assert len(list(runtime.blobs.all_paths())) == 1


@pytest.mark.usefixtures("files_only")
async def test_delivery_kept_only_for_other_owners(runtime: Runtime) -> None:
    """A delivery with no local recipient (remote ones only) keeps the blob for the queue, adds no row."""
    seen: list[int] = []

    def hook(session: object, blob_id: int, result: object) -> None:
        seen.append(blob_id)

    result = await runtime.store.deliver(
        await runtime.store.prepare(message(1)), [], extra_refs=1, in_transaction=hook
    )
    assert result.uids == {} and result.blob_id == seen[0]
    async with runtime.db.read() as session:
        assert (await session.execute(select(func.count()).select_from(Message))).scalar_one() == 0
        assert (await session.execute(select(Blob.refcount))).scalar_one() == 1
    async with runtime.db.write() as session:
        path = await session.run_sync(drop_blob_ref, seen[0])
    assert path is not None
    await runtime.store.remove_files([path])
    assert await blob_count(runtime) == 0 and list(runtime.blobs.all_paths()) == []


@pytest.mark.usefixtures("files_only")
async def test_one_failing_delivery_does_not_sink_its_batch(runtime: Runtime) -> None:
    """Deliveries committed together: a vanished folder fails only its own delivery (savepoint redo)."""
    mb = await mailbox(runtime)
    good, bad = await runtime.store.prepare(message(1)), await runtime.store.prepare(message(2))
    results = await asyncio.gather(
        runtime.store.deliver(good, [mb]),
        runtime.store.deliver(bad, [mb], folder="Nope"),
        return_exceptions=True,
    )
    assert isinstance(results[1], FolderNotFound)
    assert not isinstance(results[0], BaseException) and results[0].uids == {mb: 1}
    assert await blob_count(runtime) == 1
    assert not (runtime.blobs.root / bad.written.path).exists()
    assert (await runtime.store.usage(mb))[0].messages == 1


async def test_expunge_loads_only_the_messages_flagged_deleted(runtime: Runtime) -> None:
    """EXPUNGE used to load every message of the folder as an ORM row to find the few flagged
    \\Deleted (on each client's loop in bench/imap.py); the database now picks them (the rows
    ``queries.deleted_rows`` returns to it). A flag merely containing the word is not taken for
    \\Deleted."""
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    for n in range(12):
        await runtime.store.deliver(await runtime.store.prepare(message(n)), [mb])
    await runtime.store.set_flags(inbox.id, [4, 9], "add", {"\\Deleted"})
    await runtime.store.set_flags(inbox.id, [5], "add", {"\\DeletedNot", "Deleted"})
    async with runtime.db.read() as session:
        candidates = await session.run_sync(queries.deleted_rows, inbox.id)
    assert [row[1] for row in candidates] == [4, 5, 9]
    assert await runtime.store.expunge(inbox.id) == [4, 9]
    assert [m.uid for m in (await runtime.store.snapshot(inbox.id))[1]] == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12]


async def test_uid_sets_with_holes_and_sparse_ones(runtime: Runtime) -> None:
    """The hot path reads a UID set as the span between its ends when it is nearly a range, else in
    chunks of IN (``queries._by_uids``): both give exactly the messages named that exist, for reads,
    STORE and UID EXPUNGE."""
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    for n in range(4):
        await runtime.store.deliver(await runtime.store.prepare(message(n)), [mb])
    assert [m.uid for m in await runtime.store.messages(inbox.id, [1, 3])] == [1, 3]  # a span
    assert [m.uid for m in await runtime.store.messages(inbox.id, [4, 2, 5000])] == [2, 4]  # IN
    change = await runtime.store.set_flags(inbox.id, [2, 3, 9000], "add", {"\\Deleted"})
    assert [m.uid for m in change.changed] == [2, 3]
    infos, metas = await runtime.store.messages_with_metas(inbox.id, [1, 3, 7000])
    assert [m.uid for m in infos] == [1, 3] and set(metas) == {m.blob_id for m in infos}
    alone = await runtime.store.blob_meta(infos[1].blob_id)
    assert metas[infos[1].blob_id]["envelope"] == alone["envelope"]
    assert await runtime.store.expunge(inbox.id, [3, 8000]) == [3]
    assert [m.uid for m in (await runtime.store.snapshot(inbox.id))[1]] == [1, 2, 4]


async def test_status_counts_whole_flags_only(runtime: Runtime) -> None:
    """STATUS counts in the database (``queries.folder_counts``): a flag is the whole token, so a
    keyword or flag merely starting like \\Seen or \\Deleted is neither."""
    mb = await mailbox(runtime)
    inbox = await runtime.store.folder(mb, "INBOX")
    sizes = []
    for n in range(4):
        prepared = await runtime.store.prepare(message(n, size=100 * (n + 1)))
        sizes.append(prepared.written.size)
        await runtime.store.deliver(prepared, [mb])
    await runtime.store.set_flags(inbox.id, [1], "add", {"\\Seen", "\\Deleted"})
    await runtime.store.set_flags(inbox.id, [2], "add", {"\\SeenAlready", "\\DeletedNot"})
    await runtime.store.set_flags(inbox.id, [3], "add", {"\\Seen"})
    info, counts, uids = await runtime.store.status(mb, "inbox", uids=True)
    assert info.id == inbox.id and uids == [1, 2, 3, 4]
    assert (counts.messages, counts.unseen, counts.deleted) == (4, 2, 1)
    assert (counts.size, counts.deleted_size) == (sum(sizes), sizes[0])
    empty = await runtime.store.status(mb, "Trash")
    assert (empty[1].messages, empty[1].size, empty[2]) == (0, 0, [])


async def test_a_members_own_seen_in_the_hot_paths_reads_and_writes(runtime: Runtime) -> None:
    """Issue 14's Core statements show a member of a shared mailbox their own \\Seen (issue 16) in
    every read: SELECT's ``open_folder``, STATUS's counts, FETCH's messages with their metas, the
    catch-up; STORE writes it to their row (created, then updated) at the folder's next modseq,
    leaving the message's own modseq, which the other members see, alone."""
    store = runtime.store
    bernard, dupont = await mailbox(runtime, "dr.bernard"), await mailbox(runtime, "dr.dupont")
    org = await mailbox(runtime, "secretariat")
    inbox = await store.folder(org, "INBOX")
    for n in range(3):
        await store.deliver(await store.prepare(message(n)), [org])
    await store.set_flags(inbox.id, [1], "add", ["\\Seen"])  # the ORG's own, no member's
    mine, theirs = Viewer(bernard, frozenset({"\\Seen"})), Viewer(dupont, frozenset({"\\Seen"}))
    change = await store.set_flags(inbox.id, [2, 3], "add", ["\\Seen", "\\Flagged"], viewer=mine)
    modseq = change.changed[0].modseq
    assert [(m.uid, sorted(m.flags), m.modseq) for m in change.changed] == [
        (2, ["\\Flagged", "\\Seen"], modseq),
        (3, ["\\Flagged", "\\Seen"], modseq),
    ]

    def seen(infos: list[queries.MessageInfo]) -> list[int]:
        return [m.uid for m in infos if "\\Seen" in m.flags]

    (_, as_org), (_, as_bernard), (_, as_dupont) = [
        await store.open_folder(org, "INBOX", v) for v in (None, mine, theirs)
    ]
    assert (seen(as_org), seen(as_bernard), seen(as_dupont)) == ([1], [2, 3], [])
    assert [m.flags for m in as_dupont] == [frozenset(), {"\\Flagged"}, {"\\Flagged"}]
    assert (
        [m.modseq for m in as_bernard] == [as_org[0].modseq, modseq, modseq] == [m.modseq for m in as_dupont]
    )
    unseen = [(await store.status(org, "INBOX", viewer=v))[1].unseen for v in (None, mine, theirs)]
    assert unseen == [2, 1, 3]
    infos, metas = await store.messages_with_metas(inbox.id, [1, 2, 3], mine)
    assert seen(infos) == [2, 3] and set(metas) == {m.blob_id for m in infos}
    assert seen(await store.messages(inbox.id, [1, 3], mine)) == [3]
    assert seen((await store.snapshot(inbox.id, theirs))[1]) == []

    # After ``modseq``, BERNARD's removal of his \\Seen of 2 is his change alone: DUPONT hears of
    # nothing, and BERNARD's UNCHANGEDSINCE compares his own modseq.
    again = await store.set_flags(inbox.id, [2], "remove", ["\\Seen"], viewer=mine)
    assert seen(again.changed) == [] and again.changed[0].modseq > modseq
    _, changed, _ = await store.changes_since(inbox.id, modseq, mine)
    assert [(m.uid, sorted(m.flags)) for m in changed] == [(2, ["\\Flagged"])]
    assert (await store.changes_since(inbox.id, modseq, theirs))[1] == []
    assert (await store.set_flags(inbox.id, [2, 3], "add", ["\\Seen"], modseq, mine)).modified == [2]
    assert (await store.status(org, "INBOX", viewer=mine))[1].unseen == 2
    async with runtime.db.read() as session:
        rows = (await session.execute(select(func.count()).select_from(MemberFlags))).scalar_one()
    assert rows == 2  # BERNARD's of 2 (no flag left, its modseq kept) and of 3


@pytest.mark.usefixtures("files_only")
async def test_copy_and_move_across_mailboxes_count_on_each(runtime: Runtime) -> None:
    """Between a member's mailbox and an ORG's (issue 16): the target is charged (its quota refuses),
    a MOVE frees the source, blob references stay exact, and a viewer's private flags travel."""
    store = runtime.store
    person, org = await mailbox(runtime, "dr.bernard"), await mailbox(runtime, "secretariat")
    inbox, org_inbox = await store.folder(person, "INBOX"), await store.folder(org, "INBOX")
    for n in range(3):
        await store.deliver(await store.prepare(message(n, 2000)), [org])
    seen = Viewer(person, frozenset({"\\Seen"}))
    await store.set_flags(org_inbox.id, [1, 2], "add", ["\\Seen", "\\Flagged"], viewer=seen)

    # Out of the ORG: the copy gets the member's view of the flags, and his own mailbox pays.
    _, pairs = await store.copy(org_inbox.id, [1], "INBOX", into=person, viewer=seen)
    _, moved = await store.copy(org_inbox.id, [2], "INBOX", move=True, into=person, viewer=seen)
    assert (pairs, moved) == ([(1, 1)], [(2, 2)])
    _, mine = await store.snapshot(inbox.id)
    assert [sorted(m.flags) for m in mine] == [["\\Flagged", "\\Seen"], ["\\Flagged", "\\Seen"]]
    assert ((await store.usage(person))[0].messages, (await store.usage(org))[0].messages) == (2, 2)
    _, _, vanished = await store.changes_since(org_inbox.id, 0)
    assert vanished == [2]

    # Into the ORG, full at 2 messages: refused, nothing changed; after an expunge it fits, with the
    # member's \Seen his own and the keep filter applied.
    await accounts.set_mailbox_quota(runtime, "secretariat@a.mssante.test", None, 2)
    with pytest.raises(quota.OverQuota):
        await store.copy(inbox.id, [2], "INBOX", into=org, dest_viewer=seen)
    await store.set_flags(org_inbox.id, [3], "add", ["\\Deleted"])
    await store.expunge(org_inbox.id)
    _, back = await store.copy(
        inbox.id, [2], "INBOX", move=True, into=org, dest_viewer=seen, keep=lambda f: f - {"\\Flagged"}
    )
    assert back == [(2, 4)]
    _, as_org = await store.snapshot(org_inbox.id)
    _, as_member = await store.snapshot(org_inbox.id, seen)
    assert [sorted(m.flags) for m in as_org] == [["\\Flagged"], []]
    assert [sorted(m.flags) for m in as_member] == [["\\Flagged", "\\Seen"], ["\\Seen"]]

    for mb in (person, org):
        before, recomputed = await store.recount(mb)
        assert before == recomputed
    async with runtime.db.read() as session:
        refs = dict((await session.execute(select(Blob.path, Blob.refcount))).all())
    # Message 1 in the ORG and in his INBOX, message 2 back in the ORG alone, message 3 expunged.
    assert sorted(refs.values()) == [1, 2] and set(runtime.blobs.all_paths()) == set(refs)
