"""``caducee queue``: look at and act on the outbound queue."""

from __future__ import annotations

import click

from mailserver.cli_support import emit, fail, with_runtime
from mailserver.queue.queue import Queue
from mailserver.runtime import Runtime


@click.group("queue")
def queue_group() -> None:
    """The outbound queue towards peer operators."""


@queue_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def queue_list(rt: Runtime, as_json: bool) -> None:
    entries = await Queue(rt).entries()
    if as_json:
        emit(entries)
        return
    for e in entries:
        via = "  via [relay] (patient alert)" if e["relay"] else ""
        click.echo(
            f"{e['id']:6}  from <{e['sender']}>  queued {e['created_at']}  expires {e['expires_at']}{via}"
        )
        for r in e["recipients"]:
            click.echo(
                f"        {r['address']:40} {r['status']:8} attempts {r['attempts']}  "
                f"next {r['next_attempt']}  {r['last_reply']}"
            )


@queue_group.command("retry")
@click.argument("message_id", type=int, required=False)
@with_runtime
async def queue_retry(rt: Runtime, message_id: int | None) -> None:
    """Make queued recipients due now (every entry, or entry ID); those being delivered are left alone."""
    queue = Queue(rt)
    count = await queue.retry(message_id)
    busy = await queue.delivering(message_id)
    if message_id is not None and count == 0:
        fail(
            f"entry {message_id} is being delivered right now: left alone"
            if busy
            else f"no queued recipient in entry {message_id}"
        )
    left = f", {busy} being delivered left alone" if busy else ""
    await rt.audit.record(
        "admin", "admin", "", f"queue retry {message_id or 'all'}", f"{count} recipients{left}"
    )
    click.echo(f"{count} recipient(s) due now{left}")


@queue_group.command("delete")
@click.argument("message_id", type=int)
@with_runtime
async def queue_delete(rt: Runtime, message_id: int) -> None:
    """Drop entry ID without sending any report."""
    if not await Queue(rt).delete(message_id):
        fail(f"no queue entry {message_id}")
    await rt.audit.record("admin", "admin", "", f"queue delete {message_id}", "ok")
    click.echo(f"queue entry {message_id} deleted")
