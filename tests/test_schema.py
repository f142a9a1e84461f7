"""The API against its own OpenAPI document: requests generated from /openapi.json by schemathesis, sent with
an admin key to the in-process app over a real Edge gallery holding real photos. None may give a 5xx, and
every status answered must be documented for its operation (errors in the one error schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.api_helpers import serving

EXAMPLES_PER_OPERATION = 25  # ~17 operations: about 20 s on 2 cores


@pytest.fixture(scope="module")
def schema_api(tmp_path_factory, photos, embedder):
    with serving(tmp_path_factory.mktemp("schema-home"), tmp_path_factory.mktemp("schema-imports"), photos,
                 embedder) as state:
        state["services"].settings.key_requests_per_minute = 1_000_000  # the quotas are tested elsewhere
        yield state


def _exercise(operation, headers) -> None:
    @given(operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def answered_as_documented(case):
        case.call_and_validate(headers=headers, checks=[not_a_server_error, status_code_conformance])

    answered_as_documented()


def test_every_generated_request_is_answered_as_documented(schema_api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", schema_api["client"].app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        _exercise(operation, schema_api["admin"])


def test_errors_share_one_documented_schema(schema_api):
    spec = schema_api["client"].get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorBody"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "_" not in operation["operationId"], operation["operationId"]
            for status, response in operation["responses"].items():
                if path.startswith("/v1/") and int(status) >= 400:
                    assert response["content"]["application/json"]["schema"]["$ref"] == error_ref, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "422", "429", "503"} <= set(operation["responses"]), (method, path)
    assert spec["paths"]["/v1/collections"]["get"]["operationId"] == "listCollections"
    assert spec["paths"]["/v1/locate"]["post"]["operationId"] == "locate"
