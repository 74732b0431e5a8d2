"""``Prepared`` statements (the delivery hot path) store exactly what SQLAlchemy would, on both engines."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, update

from mailserver.accounts import add_mailbox
from mailserver.audit import INSERT_EVENTS, event_row
from mailserver.db.models import Folder
from mailserver.db.prepared import Prepared
from mailserver.runtime import Runtime


async def test_values_and_returning_match_the_orm(runtime: Runtime) -> None:
    when = dt.datetime(2026, 11, 22, 23, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    rows = [
        {**event_row("dr.martin@a.mssante.test", "receive", "127.0.0.1", "from <a@b>", "ok"), "at": when},
        event_row("é@a.mssante.test", "receive", "", "x" * 3000, "452 4.2.2 full"),
    ]
    await runtime.db.run_write(lambda session: INSERT_EVENTS.many(session.connection(), rows))
    events = await runtime.audit.events(action="receive")
    assert [(e.actor, e.request, e.response) for e in events] == [
        ("dr.martin@a.mssante.test", "from <a@b>", "ok"),
        ("é@a.mssante.test", "x" * 2000, "452 4.2.2 full"),
    ]
    assert events[0].at == when and events[0].at.tzinfo is not None

    mb = await add_mailbox(runtime, "dr.martin@a.mssante.test", "PER", rpps="10000000009")
    bump = Prepared(
        update(Folder.__table__)
        .where(Folder.mailbox_id == bindparam("mid"), Folder.name == "INBOX")
        .values(uidnext=Folder.uidnext + bindparam("n"), highestmodseq=Folder.highestmodseq + 1)
        .returning(Folder.uidnext, Folder.highestmodseq)
    )
    first = await runtime.db.run_write(lambda s: bump.rows(s.connection(), {"mid": mb.id, "n": 3}))
    second = await runtime.db.run_write(lambda s: bump.rows(s.connection(), {"mid": mb.id, "n": 2}))
    assert [tuple(r) for r in first + second] == [(4, 2), (6, 3)]
