"""Sign + verify cost per message for a 10 KiB and a 1 MiB message (ms/op).

Usage: .venv/bin/python bench/smime.py [--iterations N] [--sizes 10240,1048576]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a plain script: make tests.pki (the shared test PKI) importable

from smime.pki import TrustStore  # noqa: E402
from smime.sign import sign_message  # noqa: E402
from smime.verify import verify_message  # noqa: E402
from tests.pki import make_pki  # noqa: E402


def sample(size: int) -> bytes:
    """Text body plus a base64 attachment so the signed entity is roughly ``size`` bytes."""
    header = (
        b"From: dr.martin@a.mssante.test\r\nTo: dr.durand@b.mssante.test\r\nSubject: bench\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    )
    return header + os.urandom(max(size - len(header) - 10, 0)) + b"\r\n--b--\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50, help="operations per size (default 50)")
    parser.add_argument("--sizes", default="10240,1048576", help="comma-separated message sizes in bytes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(tmp)
        trust = TrustStore.from_files(pki.peer_ca, [pki.crl_path, pki.root_crl_path])
        ident = pki.smime["dr.martin@a.mssante.test"]
        print(f"{'size':>10} {'sign ms/op':>11} {'verify ms/op':>13} {'signed size':>12}")
        for size in (int(s) for s in args.sizes.split(",")):
            raw = sample(size)
            start = time.perf_counter()
            for _ in range(args.iterations):
                signed = sign_message(raw, ident.key, ident.cert, ident.chain).message
            sign_ms = (time.perf_counter() - start) * 1000 / args.iterations
            start = time.perf_counter()
            for _ in range(args.iterations):
                result = verify_message(signed, trust)
            verify_ms = (time.perf_counter() - start) * 1000 / args.iterations
            if result.status != "pass":
                raise SystemExit(f"verification failed: {result}")
            print(f"{size:>10} {sign_ms:>11.2f} {verify_ms:>13.2f} {len(signed):>12}")


if __name__ == "__main__":
    main()
