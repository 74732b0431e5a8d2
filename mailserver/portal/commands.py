"""``caducee conversation list|close`` and ``caducee patient invite``: thin commands over the services."""

from __future__ import annotations

import click

from mailserver import conversations
from mailserver.accounts import AccountError
from mailserver.cli_support import emit, fail, with_runtime
from mailserver.portal import service
from mailserver.runtime import Runtime


@click.group()
def conversation() -> None:
    """Patient conversations (open until the professional closes them)."""


@conversation.command("list")
@click.option("--patient", help="Only this patient's conversations (INS).")
@click.option("--mailbox", help="Only this professional's conversations (address).")
@click.option("--state", type=click.Choice(["open", "closed"]))
@click.option("--json", "as_json", is_flag=True)
@with_runtime
async def conversation_list(
    rt: Runtime, patient: str | None, mailbox: str | None, state: str | None, as_json: bool
) -> None:
    rows = await conversations.list_conversations(rt, patient=patient, mailbox=mailbox, state=state)
    if as_json:
        emit([c.as_dict() for c in rows])
        return
    for c in rows:
        closed = f"  closed {c.closed_at:%Y-%m-%d %H:%M} by {c.closed_by}" if c.closed_at else ""
        click.echo(f"{c.public_id:18} {c.state:6} {c.patient_ins}  {c.professional}{closed}")


@conversation.command("close")
@click.argument("conversation_id")
@with_runtime
async def conversation_close(rt: Runtime, conversation_id: str) -> None:
    """Close a conversation; the patient receives a short notice and can no longer reply."""
    try:
        await conversations.close(rt, conversation_id, "cli")
    except conversations.ConversationError as exc:
        fail(str(exc))
    click.echo(f"conversation {conversation_id} closed")


@click.command("invite")
@click.argument("ins")
@click.option("--send", is_flag=True, help="E-mail the activation link to the patient's personal address.")
@with_runtime
async def invite(rt: Runtime, ins: str, send: bool) -> None:
    """A one-time activation code for the patient portal (valid 7 days): printed, or with --send
    e-mailed as a link through [relay] to the address on the patient's record."""
    if send:
        try:
            address, entry, expires = await service.send_invite(rt, ins)
        except AccountError as exc:
            fail(str(exc))
        click.echo(f"activation link for {address} e-mailed to the patient's personal address")
        click.echo(f"queue entry {entry}; valid until {expires:%Y-%m-%d %H:%M} UTC, once.")
        return
    address, code, expires = await service.invite(rt, ins)
    click.echo(f"activation code for {address}: {code}")
    click.echo(f"valid until {expires:%Y-%m-%d %H:%M} UTC, once; give it to the patient in person.")
