"""Schemathesis fuzzes ``/api/v1/`` from the OpenAPI document the portal serves: whatever it sends,
no 5xx, and every error is an RFC 9457 problem+json."""

from __future__ import annotations

import asyncio

import hypothesis
import schemathesis
from schemathesis import GenerationMode

from mailserver.portal.api import OPENAPI
from tests.api.conftest import API

# tus PATCH bodies (``/api/v1/uploads/{id}``) are raw bytes, sent as schemathesis sends octet streams.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


def fuzz(url: str, headers: dict[str, str]) -> list[str]:
    """Every generated call (positive and negative data) against the live listener; the failures."""
    schema = schemathesis.openapi.from_dict(OPENAPI).include(path_regex="^/api/v1/")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=40,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.generate],
            )
            def call(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                resp = case.call(base_url=url, headers=headers, timeout=10)
                kind = " ".join(resp.headers.get("content-type", []))  # schemathesis: lists by lower name
                if resp.status_code >= 500 or (
                    resp.status_code >= 400 and not kind.startswith("application/problem+json")
                ):
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {resp.status_code} {kind} {resp.text[:80]!r}"
                        f" {case.media_type} {dict(case.headers or {})!r:.120}"
                    )

            call()
    assert calls >= 100  # the fuzzer did run
    return failures


async def test_fuzzing_finds_no_5xx_and_only_problems(api: API) -> None:
    api.rt.settings.api.messages_per_minute = 10_000
    assert await asyncio.to_thread(fuzz, api.url, api.auth()) == []
