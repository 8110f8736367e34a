"""Property-based: schemathesis generates requests from the app's own OpenAPI schema. No
answer may be a 5xx, and every answer must match the schema (status, content type, body),
with and without the API key configured."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    positive_data_acceptance,
    unsupported_method,
)

from app.api.app import create_app
from app.core.config import Settings
from app.db.session import upgrade
from tests.helpers import TEST_HOST

KEY = "schema-test-key"


def _app(key: str | None):  # type: ignore[no-untyped-def]
    data = Path(tempfile.mkdtemp(prefix="hotdog-schema-"))
    settings = Settings(data_dir=data, database_url=None, broker_url=None, api_key=key,
                        allowed_hosts=TEST_HOST)
    upgrade(settings.db_url)
    return create_app(settings, check=False)


# Checks that do not apply: a schema cannot say which bytes are a valid zip or image, or
# which ids exist, so a schema-valid request may rightly be refused (positive data
# acceptance); Starlette answers OPTIONS per method route (Allow header); and without a key
# configured, any credential is ignored by design (ignored auth).
NOT_APPLICABLE = [positive_data_acceptance, unsupported_method]

open_schema = schemathesis.openapi.from_asgi("/openapi.json", _app(None))
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", _app(KEY),
                                               headers={"X-API-Key": KEY})
FUZZ = hypothesis_settings(max_examples=30, deadline=None,
                           suppress_health_check=list(HealthCheck))


@open_schema.parametrize()
@FUZZ
def test_no_5xx_and_schema_conformance(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=[*NOT_APPLICABLE, ignored_auth])


@keyed_schema.parametrize()
@FUZZ
def test_no_5xx_and_schema_conformance_with_a_key(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                           excluded_checks=NOT_APPLICABLE)
