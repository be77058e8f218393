"""Credential detection for recorded headers and request bodies (capture/redact.py)."""

from __future__ import annotations

import json

import pytest

from capture.redact import body_holds_credentials, is_secret_header


@pytest.mark.parametrize(
    "name",
    ["authorization", "x-api-key", "X-AWS-Access-Key", "X-AWS-Secret-Key",
     "X-AWS-Session-Token", "X-OpenAI-Api-Key", "x-private-key"],
)
def test_secret_headers(name: str) -> None:
    assert is_secret_header(name)


@pytest.mark.parametrize("name", ["content-type", "x-embedguard-seq", "user-agent", "db-name"])
def test_ordinary_headers(name: str) -> None:
    assert not is_secret_header(name)


@pytest.mark.parametrize(
    "doc",
    [
        {"userName": "svc", "password": "x"},  # Milvus users/create
        {"userName": "svc", "password": "x", "newPassword": "y"},  # update_password
        {"files": [["a"]], "accessKey": "AK", "secretKey": "SK", "token": "t"},  # import
        {"location": "https://snap/x", "api_key": "k"},  # Qdrant snapshot recovery
        {"nested": [{"deep": {"Client-Secret": "s"}}]},
        # Milvus snapshot restore: externalSpec is a JSON string holding the keys
        {"targetCollectionName": "c", "snapshotMetadataURI": "s3://b/m",
         "externalSpec": json.dumps({"extfs": {"access_key_id": "AK", "access_key_value": "SK"}})},
        # ...or an object, sent by a client that does not quote it
        {"collectionName": "c", "snapshotName": "s", "targetS3Path": "s3://b",
         "spec": {"extfs": {"access_key_value": "SK"}}},
        {"opts": '[{"connection_string": "DefaultEndpointsProtocol=https;AccountKey=k"}]'},
        {"sas_token": "sv=2020&sig=x"},
    ],
)
def test_bodies_with_credentials(doc: object) -> None:
    assert body_holds_credentials(json.dumps(doc).encode())


def test_a_key_spelled_with_escapes_or_a_broken_body_still_counts() -> None:
    assert body_holds_credentials(b'{"p\\u0061ssword": "s"}')
    assert body_holds_credentials(b'not json but "password": "s"')


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"filter": {"must": [{"key": "city", "match": {"value": "x"}}]}}',  # Qdrant filter
        b'{"points": [{"id": 1, "vector": [0.1], "payload": {"tokens": 12, "keys": ["a"]}}]}',
        b'{"documents": ["a\\nb"]}',
        b"not json at all \\ with a backslash",
        b'{"payload": {"note": "{\\"a\\": 1}", "list": "[1, 2]", "brace": "{not json"}}',
    ],
)
def test_bodies_without_credentials(body: bytes) -> None:
    assert not body_holds_credentials(body)


@pytest.mark.parametrize(("query", "redacted", "kept"), [
    ("", "", ""),
    ("wait=true&limit=3", "wait=true&limit=3", "wait=true&limit=3"),
    ("api-key=s3cr3t&wait=true", "api-key=[REDACTED]&wait=true", "wait=true"),
    ("apikey=a&API_KEY=b&x-api-key=c&token=d&access_token=e&key=f&password=g&auth=h",
     "&".join(f"{k}=[REDACTED]" for k in
              ("apikey", "API_KEY", "x-api-key", "token", "access_token", "key", "password",
               "auth")), ""),
    ("paginationToken=p&author=ann&keyword=k", "paginationToken=p&author=ann&keyword=k",
     "paginationToken=p&author=ann&keyword=k"),
    ("api%2Dkey=s&flag", "api%2Dkey=[REDACTED]&flag", "flag"),
])
def test_credential_query_parameters(query: str, redacted: str, kept: str) -> None:
    from capture.redact import redact_query, strip_secret_query

    assert redact_query(query) == redacted
    assert strip_secret_query(query)[0] == kept
