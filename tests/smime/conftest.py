"""S/MIME fixtures built on the session-wide ``pki`` fixture of tests/conftest.py."""

from __future__ import annotations

import pytest

from smime.pki import TrustStore
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
