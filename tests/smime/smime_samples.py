"""Sample messages for the S/MIME tests (kept out of conftest so tests can import them)."""

from __future__ import annotations


def text_message(
    sender: str = "dr.martin@a.mssante.test", body: bytes = b"Bonjour,\r\n\r\nCompte rendu.\r\n"
) -> bytes:
    return (
        f"From: Dr Martin <{sender}>\r\n"
        "To: Dr Durand <dr.durand@b.mssante.test>\r\n"
        "Subject: Compte rendu\r\n"
        "Date: Mon, 06 Jan 2025 10:00:00 +0100\r\n"
        "Message-ID: <cr-1@a.mssante.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    ).encode() + body


def mixed_message(
    text: bytes, attachment: bytes, cte: str, sender: str = "dr.martin@a.mssante.test"
) -> bytes:
    """multipart/mixed with an 8bit text part and an attachment in ``cte`` (binary or 8bit)."""
    return (
        (
            f"From: {sender}\r\n"
            "To: dr.durand@b.mssante.test\r\n"
            "Subject: =?utf-8?q?Pi=C3=A8ce_jointe?=\r\n"
            "Message-ID: <pj-1@a.mssante.test>\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="=_b1"\r\n'
            "\r\n"
            "--=_b1\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "\r\n"
        ).encode()
        + text
        + (
            "\r\n--=_b1\r\n"
            'Content-Type: application/octet-stream; name="scan.bin"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n"
            'Content-Disposition: attachment; filename="scan.bin"\r\n'
            "\r\n"
        ).encode()
        + attachment
        + b"\r\n--=_b1--\r\n"
    )
