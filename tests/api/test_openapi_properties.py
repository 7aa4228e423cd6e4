"""Schemathesis against the published OpenAPI: generated requests never get a server error, and
every response matches its documented status, content type and schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Planted, read_only_app


def test_generated_requests_conform(planted_family: Planted) -> None:
    with read_only_app(planted_family.url, planted_family.config) as app:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 7
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=60,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case: schemathesis.Case) -> None:
                case.call_and_validate()

            try:
                conforms()
            except Exception as exc:
                pytest.fail(f"{operation.label}: {exc}")
