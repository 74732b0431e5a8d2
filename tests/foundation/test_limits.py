"""The connection gate every listener shares (mailserver/limits.py): its counts, and an audit of refusals
that a flood cannot turn into unbounded writes."""

from __future__ import annotations

import pytest

from config.settings import LimitsSettings
from mailserver import limits
from mailserver.limits import ConnectionGate, Refused, Slot
from mailserver.runtime import Runtime


def admitted(result: Slot | Refused) -> Slot:
    assert isinstance(result, Slot), result
    return result


async def test_counts_per_address_user_and_user_address(runtime: Runtime) -> None:
    gate = ConnectionGate(
        "imap",
        LimitsSettings(
            max_connections=6, connections_per_ip=4, connections_per_user_ip=2, connections_per_user=3
        ),
        runtime.audit,
    )
    hospital = [admitted(gate.connect("192.0.2.1")) for _ in range(4)]
    assert gate.connect("192.0.2.1") == Refused(
        "connections_per_ip", "too many connections from your address, try again later"
    )
    assert gate.login(hospital[0], "a@x.test") is None
    assert gate.login(hospital[1], "a@x.test") is None
    refused = gate.login(hospital[2], "a@x.test")
    assert refused is not None and refused.limit == "connections_per_user_ip"
    assert gate.login(hospital[2], "b@x.test") is None  # a colleague behind the same address
    home = admitted(gate.connect("198.51.100.7"))
    assert gate.login(home, "a@x.test") is None
    elsewhere = admitted(gate.connect("203.0.113.9"))
    refused = gate.login(elsewhere, "a@x.test")
    assert refused is not None and refused.limit == "connections_per_user"
    full = gate.connect("203.0.113.10")
    assert isinstance(full, Refused) and full.limit == "max_connections"

    gate.login(hospital[2], "a@x.test")  # a new login on a slot first gives up the old one (LDAP rebind)
    assert gate.per_user == {"a@x.test": 3} and "b@x.test" not in gate.per_user
    gate.release(hospital[0])
    gate.release(hospital[0])  # twice: harmless
    assert gate.per_user_ip[("a@x.test", "192.0.2.1")] == 1 and gate.total == 5
    for slot in [*hospital, home, elsewhere]:
        gate.release(slot)
    assert (gate.total, gate.per_ip, gate.per_user, gate.per_user_ip) == (0, {}, {}, {})
    await gate.drain()


async def test_a_flood_of_refusals_costs_a_bounded_number_of_audit_events(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    gate = ConnectionGate("smtp", LimitsSettings(max_connections=1000, connections_per_ip=1), runtime.audit)
    held = [
        admitted(gate.connect(f"10.1.{i // 250}.{i % 250}")) for i in range(limits.AUDITED_PER_MINUTE + 50)
    ]
    for _ in range(20):  # the same address again and again: audited once
        assert isinstance(gate.connect("10.1.0.0"), Refused)
    for slot in held:  # more addresses than are audited one by one in a minute
        assert isinstance(gate.connect(slot.ip), Refused)
    await gate.drain()
    events = await runtime.audit.events(action="smtp-refused")
    one_by_one = [e for e in events if e.actor.startswith("client:")]
    assert len(one_by_one) == limits.AUDITED_PER_MINUTE
    assert len({e.remote for e in one_by_one}) == limits.AUDITED_PER_MINUTE
    assert one_by_one[0].response == (
        "too many connections from your address, try again later ([limits] connections_per_ip = 1)"
    )
    [summary] = [e for e in events if e.actor == "server"]
    assert summary.response == "70 more refusals within a minute, not audited one by one"
    lines = [getattr(r, "event", None) for r in caplog.records]
    assert lines.count("connection-refused") == limits.AUDITED_PER_MINUTE
    assert lines.count("connections-refused") == 1
