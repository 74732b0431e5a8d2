"""S/MIME fixtures built on the session-wide ``pki`` fixture of tests/conftest.py."""

from __future__ import annotations

import pytest

from mailserver import accounts
from mailserver.runtime import Runtime
from smime.pki import TrustStore
from smime.service import SMIMEService, service_for
from tests.pki import Identity, TestPKI


@pytest.fixture(scope="session")
def trust(pki: TestPKI) -> TrustStore:
    return TrustStore.from_files(pki.peer_ca, [pki.crl_path, pki.root_crl_path])


@pytest.fixture(scope="session")
def martin(pki: TestPKI) -> Identity:
    return pki.smime["dr.martin@a.mssante.test"]


@pytest.fixture(scope="session")
def durand(pki: TestPKI) -> Identity:
    return pki.smime["dr.durand@b.mssante.test"]


RPPS = "10000000009"


@pytest.fixture
async def smime_rt(runtime: Runtime, pki: TestPKI) -> Runtime:
    """The ``runtime`` (SQLite and PostgreSQL) with the test PKI as S/MIME anchors and two mailboxes."""
    runtime.settings.smime.ca = str(pki.peer_ca)
    runtime.settings.smime.crl = [str(pki.crl_path), str(pki.root_crl_path)]
    await accounts.add_mailbox(runtime, "dr.martin@a.mssante.test", "PER", rpps=RPPS)
    await accounts.add_mailbox(runtime, "secretariat@a.mssante.test", "ORG")
    return runtime


@pytest.fixture
async def svc(smime_rt: Runtime) -> SMIMEService:
    return await service_for(smime_rt)
