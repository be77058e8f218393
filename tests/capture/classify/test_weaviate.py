"""capture/classify/weaviate.py and _weaviate_graphql.py: REST routes,
GraphQL rules (search vs read, ids, aliases, fragments, variables), MCP."""

from __future__ import annotations

import json

import pytest

from capture.classify.weaviate import ROUTES, classify_weaviate
from capture.types import Classification, HttpRequest
from tests.capture.classify.table import E, Row, assert_routes_covered, params, run_rows

OID = "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11"
REF = "7c2c6d4f-7f1f-4c7b-8b68-4f4d9f1c3b22"
WHERE = {"path": ["tenant"], "operator": "Equal", "valueText": "t1"}


def G(name: str, query: str, expect: list[dict[str, object]], **kw: object) -> Row:
    body: dict[str, object] = {"query": query}
    if "variables" in kw:
        body["variables"] = kw.pop("variables")
    if "operationName" in kw:
        body["operationName"] = kw.pop("operationName")
    return Row(f"graphql {name}", "POST", "/v1/graphql", body=body, expect=expect, **kw)  # type: ignore[arg-type]


REST = [
    *[
        Row(f"health {p}", "GET", p, expect=[E("health", None)])
        for p in (
            "/v1/",
            "/v1/.well-known/live",
            "/v1/.well-known/openid-configuration",
            "/v1/meta",
            "/v1/nodes",
            "/v1/nodes/Doc",
            "/v1/cluster/statistics",
            "/v1/tasks",
            "/v1/users/own-info",
        )
    ],
    Row(
        "list objects of a class",
        "GET",
        "/v1/objects",
        query=[
            ("class", "doc"),
            ("limit", "25"),
            ("include", "vector,classification"),
            ("tenant", "t1"),
        ],
        expect=[E("read", "Doc", database="t1", ids_known=False, limit=25, with_vectors=True)],
        response_ids=["objects[].id"],
        user_data=["objects[].properties"],
    ),
    Row(
        "list objects of every class",
        "GET",
        "/v1/objects",
        expect=[E("read", "*", with_vectors=False)],
    ),
    Row(
        "create object without id",
        "POST",
        "/v1/objects",
        body={
            "class": "doc",
            "properties": {},
            "vectors": {"a": [0.1], "b": [0.2]},
            "tenant": "t1",
        },
        expect=[E("write", "Doc", database="t1", ids=[], ids_known=False, vector_count=2)],
        response_ids=["id"],
        user_data=["properties"],
    ),
    Row("head object", "HEAD", f"/v1/objects/Doc/{OID}", expect=[E("read", "Doc", ids=[OID])]),
    Row(
        "replace object",
        "PUT",
        f"/v1/objects/Doc/{OID}",
        body={"class": "Doc", "id": OID, "properties": {}, "vector": [0.1]},
        expect=[E("write", "Doc", ids=[OID], vector_count=1, detail="replace_object")],
    ),
    Row(
        "patch object",
        "PATCH",
        f"/v1/objects/Doc/{OID}",
        body={"properties": {"a": 1}},
        expect=[E("write", "Doc", ids=[OID], detail="update_object")],
    ),
    Row(
        "delete object",
        "DELETE",
        f"/v1/objects/doc/{OID}",
        query=[("tenant", "t1")],
        expect=[E("delete", "Doc", database="t1", ids=[OID])],
    ),
    Row(
        "deprecated get without class",
        "GET",
        f"/v1/objects/{OID}",
        expect=[E("read", "*", ids=[OID], detail="get_object_deprecated")],
    ),
    Row(
        # an empty class is no class filter to Weaviate: every class
        "deprecated get with an empty class",
        "GET",
        f"/v1/objects/{OID}",
        query=[("class", "")],
        expect=[E("read", "*", ids=[OID], detail="get_object_deprecated")],
    ),
    Row(
        "list objects with an empty class",
        "GET",
        "/v1/objects",
        query=[("class", ""), ("limit", "5")],
        expect=[E("read", "*", ids_known=False, limit=5)],
    ),
    Row(
        # an empty tenant is no tenant, as Weaviate reads it
        "list objects with an empty tenant",
        "GET",
        "/v1/objects",
        query=[("class", "doc"), ("tenant", "")],
        expect=[E("read", "Doc", database=None)],
    ),
    Row(
        "list objects, class named twice",
        "GET",
        "/v1/objects",
        query=[("class", "PublicDocs"), ("class", "Secret"), ("limit", "5")],
        error="query parameter 'class' appears 2 times",
    ),
    Row(
        "list objects, limit named twice",
        "GET",
        "/v1/objects",
        query=[("class", "PublicDocs"), ("limit", "5"), ("limit", "100000")],
        error="query parameter 'limit' appears 2 times",
    ),
    Row(
        "deprecated delete with class",
        "DELETE",
        f"/v1/objects/{OID}",
        query=[("class", "doc")],
        expect=[E("delete", "Doc", ids=[OID])],
    ),
    Row(
        "deprecated put",
        "PUT",
        f"/v1/objects/{OID}",
        body={"class": "Doc", "properties": {}},
        expect=[E("write", "Doc", ids=[OID])],
    ),
    Row(
        "add reference",
        "POST",
        f"/v1/objects/Doc/{OID}/references/author",
        body={"beacon": f"weaviate://localhost/Person/{REF}"},
        expect=[E("write", "Doc", ids=[OID, REF], detail="add_reference")],
    ),
    Row(
        "replace references",
        "PUT",
        f"/v1/objects/Doc/{OID}/references/author",
        body=[{"beacon": f"weaviate://localhost/{REF}"}],
        expect=[E("write", "Doc", ids=[OID, REF], detail="replace_references")],
    ),
    Row(
        "deprecated reference",
        "DELETE",
        f"/v1/objects/{OID}/references/author",
        body={"beacon": f"weaviate://localhost/Person/{REF}"},
        expect=[E("write", "*", ids=[OID, REF])],
    ),
    Row(
        "validate object",
        "POST",
        "/v1/objects/validate",
        body={"class": "Doc"},
        error="only validates an object",
    ),
    Row(
        "batch objects by class and tenant",
        "POST",
        "/v1/batch/objects",
        body={
            "objects": [
                {"class": "Doc", "id": OID, "vector": [0.1], "tenant": "a"},
                {"class": "doc", "id": REF, "tenant": "a"},
                {"class": "Doc", "tenant": "b"},
            ]
        },
        expect=[
            E("write", "Doc", database="a", ids=[OID, REF], ids_known=True, vector_count=1),
            E("write", "Doc", database="b", ids=[], ids_known=False),
        ],
    ),
    Row(
        "batch delete dry run with id filter",
        "DELETE",
        "/v1/batch/objects",
        body={
            "match": {
                "class": "Doc",
                "where": {"path": ["id"], "operator": "ContainsAny", "valueTextArray": [OID, REF]},
            },
            "dryRun": True,
        },
        expect=[
            E(
                "delete",
                "Doc",
                ids=[OID, REF],
                ids_known=False,
                filter_present=True,
                detail="batch_delete_dry_run",
            )
        ],
        response_ids=["results.objects[].id"],
    ),
    Row(
        "batch references",
        "POST",
        "/v1/batch/references",
        body=[
            {"from": f"weaviate://localhost/Doc/{OID}/author", "to": f"weaviate://localhost/{REF}"},
            {
                "from": f"weaviate://localhost/Note/{REF}/ref",
                "to": f"weaviate://localhost/Doc/{OID}",
                "tenant": "t",
            },
        ],
        expect=[
            E("write", "Doc", ids=[OID, REF]),
            E("write", "Note", database="t", ids=[REF, OID]),
        ],
    ),
    Row(
        "rest near-text",
        "POST",
        "/v1/search/doc/near-text",
        body={"query": "hello", "limit": 3, "where": WHERE},
        expect=[E("search", "Doc", limit=3, filter_present=True, ids_known=False)],
        response_ids=["results[].id"],
        user_data=["results[].properties", "results[].references"],
    ),
    Row(
        "rest near-object",
        "POST",
        "/v1/search/Doc/near-object",
        body={"id": OID},
        expect=[E("search", "Doc", ids=[OID])],
    ),
    Row(
        "rest aggregate",
        "POST",
        "/v1/aggregate/Doc",
        body={"where": WHERE},
        expect=[E("read", "Doc", filter_present=True)],
        user_data=["groups[]"],
    ),
    Row("get schema", "GET", "/v1/schema", expect=[E("schema", "*")]),
    Row(
        "create class",
        "POST",
        "/v1/schema",
        body={"class": "article"},
        expect=[E("admin", "Article")],
    ),
    Row("get class", "GET", "/v1/schema/doc", expect=[E("schema", "Doc")]),
    Row("update class", "PUT", "/v1/schema/Doc", body={}, expect=[E("admin", "Doc")]),
    Row(
        "add property",
        "POST",
        "/v1/schema/Doc/properties",
        body={"name": "p"},
        expect=[E("admin", "Doc")],
    ),
    Row(
        "property tokenize",
        "POST",
        "/v1/schema/Doc/properties/p/tokenize",
        body={},
        error="text utility",
    ),
    Row("tokenize", "POST", "/v1/tokenize", body={"text": "x"}, error="text utility"),
    Row("indexes", "GET", "/v1/schema/Doc/indexes", expect=[E("schema", "Doc")]),
    Row("shards", "GET", "/v1/schema/Doc/shards", expect=[E("schema", "Doc")]),
    Row("update shard", "PUT", "/v1/schema/Doc/shards/s1", body={}, expect=[E("admin", "Doc")]),
    Row("get tenants", "GET", "/v1/schema/Doc/tenants", expect=[E("schema", "Doc")]),
    Row(
        "add tenants",
        "POST",
        "/v1/schema/Doc/tenants",
        body=[{"name": "t"}],
        expect=[E("admin", "Doc")],
    ),
    Row(
        "delete tenants",
        "DELETE",
        "/v1/schema/Doc/tenants",
        body=["t"],
        expect=[E("admin", "Doc", ids_known=False)],
    ),
    Row("tenant exists", "HEAD", "/v1/schema/Doc/tenants/t", expect=[E("schema", "Doc")]),
    Row(
        "property index",
        "DELETE",
        "/v1/schema/Doc/properties/p/index/filterable",
        expect=[E("admin", "Doc")],
    ),
    Row(
        "property index rebuild",
        "POST",
        "/v1/schema/Doc/properties/p/index/filterable/rebuild",
        expect=[E("admin", "Doc")],
    ),
    Row(
        "property index cancel",
        "POST",
        "/v1/schema/Doc/properties/p/index/filterable/cancel",
        expect=[E("admin", "Doc")],
    ),
    Row(
        "vector index",
        "PUT",
        "/v1/schema/Doc/vectors/default/index",
        body={},
        expect=[E("admin", "Doc")],
    ),
    Row(
        "list aliases", "GET", "/v1/aliases", query=[("class", "doc")], expect=[E("schema", "Doc")]
    ),
    Row(
        "create alias",
        "POST",
        "/v1/aliases",
        body={"alias": "Current", "class": "Doc"},
        expect=[E("admin", "Current"), E("admin", "Doc"),
                E("read", "Doc", bulk=True, ids_known=False),
                E("write", "Doc", bulk=True, ids_known=False)],
    ),
    Row("get alias", "GET", "/v1/aliases/Current", expect=[E("schema", "Current")]),
    Row(
        "repoint alias",
        "PUT",
        "/v1/aliases/Current",
        body={"class": "Doc2"},
        expect=[E("admin", "Current"), E("admin", "Doc2"),
                E("read", "Doc2", bulk=True, ids_known=False),
                E("write", "Doc2", bulk=True, ids_known=False)],
    ),
    Row("delete alias", "DELETE", "/v1/aliases/Current", expect=[E("admin", "Current")]),
    Row(
        "classification",
        "POST",
        "/v1/classifications/",
        body={"class": "Doc"},
        expect=[E("write", "Doc", ids_known=False)],
    ),
    Row("get classification", "GET", f"/v1/classifications/{OID}", expect=[E("admin")]),
    Row(
        "backup selected classes",
        "POST",
        "/v1/backups/s3",
        body={"id": "b1", "include": ["doc", "Note"]},
        expect=[E("admin", "Doc", detail="backup"), E("admin", "Note", detail="backup")],
    ),
    Row("backup everything", "POST", "/v1/backups/s3", body={"id": "b1"}, expect=[E("admin", "*")]),
    Row("backup status", "GET", "/v1/backups/s3/b1", expect=[E("admin", None)]),
    Row(
        "backup restore",
        "POST",
        "/v1/backups/s3/b1/restore",
        body={"exclude": ["X"]},
        expect=[E("admin", "*")],
    ),
    Row("backups too deep", "GET", "/v1/backups/s3/b1/x/y/z", error="unrecognised endpoint"),
    Row(
        "export",
        "POST",
        "/v1/export/s3",
        body={"include": ["Doc"]},
        expect=[E("admin", "Doc", detail="export")],
    ),
    Row("export status", "GET", "/v1/export/s3/e1", expect=[E("admin")]),
    Row("export 2", "GET", "/v1/export/s3/e1/status", expect=[E("admin")]),
    Row("export 3", "DELETE", "/v1/export/s3/e1/a/b", expect=[E("admin")]),
    Row("backups 3", "DELETE", "/v1/backups/s3/b1/a/b", expect=[E("admin")]),
    *[
        Row(f"admin {p}", m, p, expect=[E("admin")])
        for m, p in [
            ("GET", "/v1/replication"),
            ("POST", "/v1/replication/replicate"),
            ("GET", "/v1/replication/replicate/x"),
            ("DELETE", "/v1/replication/a/b/c"),
            ("GET", "/v1/replication/a/b/c/d"),
            ("GET", "/v1/users/db"),
            ("POST", "/v1/users/db/alice"),
            ("POST", "/v1/users/db/alice/rotate-key"),
            ("GET", "/v1/users/db/a/b/c"),
            ("GET", "/v1/users/db/a/b/c/d"),
            ("GET", "/v1/authz"),
            ("GET", "/v1/authz/roles"),
            ("POST", "/v1/authz/roles/r/add"),
            ("GET", "/v1/authz/a/b"),
            ("GET", "/v1/authz/a/b/c"),
            ("GET", "/v1/authz/a/b/c/d"),
            ("GET", "/v1/namespaces"),
            ("POST", "/v1/namespaces/n"),
            ("GET", "/v1/namespaces/a/b"),
            ("GET", "/v1/namespaces/a/b/c"),
            ("GET", "/v1/namespaces/a/b/c/d"),
        ]
    ],
]

MCP_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
MCP = [
    Row(
        "mcp initialize",
        "POST",
        "/v1/mcp",
        body={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}},
        expect=[E("health")],
    ),
    Row(
        "mcp tools/list",
        "POST",
        "/v1/mcp",
        body={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        expect=[E("health")],
    ),
    Row(
        "mcp hybrid",
        "POST",
        "/v1/mcp",
        body={
            **MCP_CALL,
            "params": {
                "name": "weaviate-query-hybrid",
                "arguments": {"collection_name": "doc", "query": "x", "tenant_name": "t"},
            },
        },
        expect=[E("search", "Doc", database="t", ids_known=False)],
    ),
    Row(
        "mcp upsert",
        "POST",
        "/v1/mcp",
        body={
            **MCP_CALL,
            "params": {
                "name": "weaviate-objects-upsert",
                "arguments": {
                    "collection_name": "Doc",
                    "objects": [{"uuid": OID, "properties": {}}, {"properties": {}}],
                },
            },
        },
        expect=[E("write", "Doc", ids=[OID], ids_known=False)],
    ),
    Row(
        "mcp config",
        "POST",
        "/v1/mcp",
        body={**MCP_CALL, "params": {"name": "weaviate-collections-get-config", "arguments": {}}},
        expect=[E("schema", "*")],
    ),
    Row(
        "mcp batch",
        "POST",
        "/v1/mcp",
        body=[
            {
                **MCP_CALL,
                "params": {
                    "name": "weaviate-tenants-list",
                    "arguments": {"collection_name": "Doc"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
        ],
        expect=[E("schema", "Doc"), E("health")],
    ),
    Row(
        "mcp unclassified tool",
        "POST",
        "/v1/mcp",
        body={
            **MCP_CALL,
            "params": {"name": "weaviate-objects-delete", "arguments": {"collection_name": "Doc"}},
        },
        error="MCP tool 'weaviate-objects-delete' is not classified",
    ),
    Row(
        "mcp unknown method",
        "POST",
        "/v1/mcp",
        body={"jsonrpc": "2.0", "id": 1, "method": "resources/read"},
        error="not a recognised MCP method",
    ),
    Row("mcp stream", "GET", "/v1/mcp", error="stream or session control"),
]

GRAPHQL = [
    G(
        "get read with id filter",
        '{ Get { Doc(where:{path:["id"], operator:Equal, '
        f'valueText:"{OID}"}}, tenant:"t1", limit: 2) {{ title }} }} }}',
        [E("read", "Doc", database="t1", ids=[OID], ids_known=False, filter_present=True, limit=2)],
    ),
    G("get bm25", '{ Get { Doc(bm25:{query:"x"}) { title } } }', [E("search", "Doc")]),
    G(
        "get hybrid with vector",
        '{ Get { Doc(hybrid:{query:"x", vector:[0.1]}) { t } } }',
        [E("search", "Doc", vector_count=1)],
    ),
    G(
        "get nearObject + nearText move",
        '{ Get { Doc(nearObject:{id:"' + OID + '"}) { t } '
        'Note(nearText:{concepts:["a"], moveTo:{force:0.5, objects:[{id:"' + REF + '"}]}}) '
        "{ t } } }",
        [E("search", "Doc", ids=[OID]), E("search", "Note", ids=[REF])],
        response_ids=["data.Get.Doc[]._additional.id", "data.Get.Note[]._additional.id"],
    ),
    G(
        "get beacon nearObject",
        '{ Get { Doc(nearObject:{beacon:"weaviate://localhost/Doc/' + OID + '"}) { t } } }',
        [E("search", "Doc", ids=[OID])],
    ),
    G(
        "aliases, fragments, variables and generate",
        "query Q($v: [Float], $lim: Int) { g: Get { d: doc(nearVector:{vector:$v}, "
        "limit:$lim) { ...F ... on Doc { body } _additional { vec: vector "
        'generate(singleResult:{prompt:"x"}) { singleResult } } } } } '
        "fragment F on Doc { title }",
        [
            E(
                "search",
                "Doc",
                vector_count=1,
                limit=4,
                with_vectors=True,
                detail="graphql.Get.generate",
            )
        ],
        variables={"v": [0.1, 0.2], "lim": 4},
        operationName="Q",
        response_ids=["data.g.d[]._additional.id"],
        user_data=["data.g.d[].title", "data.g.d[].body", "data.g.d[]._additional.generate"],
        vectors=["data.g.d[]._additional.vec"],
    ),
    G(
        "aggregate with topOccurrences",
        '{ Aggregate { Doc(where:{path:["a"], operator:Equal,'
        ' valueInt:1}, groupBy:["cat"]) { meta { count } cat { topOccurrences { value } } '
        "groupedBy { value } } } }",
        [E("read", "Doc", filter_present=True)],
        user_data=[
            "data.Aggregate.Doc[].cat.topOccurrences[].value",
            "data.Aggregate.Doc[].groupedBy.value",
        ],
    ),
    G(
        "explore",
        "{ Explore(nearVector:{vector:[0.1]}, limit:2) { beacon className } }",
        [E("search", "*", vector_count=1, limit=2)],
        response_ids=["data.Explore[].beacon"],
    ),
    G("introspection", "{ __schema { types { name } } }", [E("schema", None)]),
    G(
        "several operations, one selected",
        "query A { Get { Doc { t } } } query B { Aggregate { Note { meta { count } } } }",
        [E("read", "Note")],
        operationName="B",
    ),
    Row(
        "graphql batch",
        "POST",
        "/v1/graphql/batch",
        body=[
            {"query": "{ Get { Doc { t } } }"},
            {"query": '{ Get { Note(nearText:{concepts:["x"]}) { t } } }'},
        ],
        expect=[E("read", "Doc"), E("search", "Note")],
        response_ids=["[].data.Get.Doc[]._additional.id", "[].data.Get.Note[]._additional.id"],
    ),
    # errors
    G("mutation", "mutation { x }", [], error="is a GraphQL mutation"),
    G("subscription", "subscription { x }", [], error="is a GraphQL subscription"),
    G("syntax error", "{ Get { Doc { t } ", [], error="is not valid GraphQL"),
    G(
        "unknown top level",
        "{ Delete { Doc } }",
        [],
        error="unrecognised top-level GraphQL field 'Delete'",
    ),
    G("empty Get", "{ Get }", [], error="Get selects no class"),
    G(
        "missing variable",
        "query ($v: [Float]) { Get { Doc(nearVector:{vector:$v}) { t } } }",
        [],
        error="uses a variable that is not provided",
    ),
    G("unknown fragment", "{ Get { Doc { ...Nope } } }", [], error="unknown fragment 'Nope'"),
    G(
        "ambiguous operation",
        "query A { Get { Doc { t } } } query B { Get { Doc { t } } }",
        [],
        error="2 operations and no operationName",
    ),
    G(
        "wrong operationName",
        "query A { Get { Doc { t } } }",
        [],
        operationName="Z",
        error="names no operation",
    ),
    G("type definition", "type X { a: Int }", [], error="type-system definition"),
    G(
        "cyclic fragments",
        "{ Get { Doc { ...A } } } fragment A on Doc { ...B } fragment B on Doc { ...A }",
        [],
        error="nests fragments deeper than 16",
    ),
    G(
        "bad beacon",
        '{ Get { Doc(nearObject:{beacon:"http://x"}) { t } } }',
        [],
        error="is not a weaviate:// beacon",
    ),
    G(
        "infinite float in filter",
        '{ Get { Doc(where:{path:["a"], operator:Equal, valueNumber:1e999}) { t } } }',
        [],
        error="not finite",
    ),
    Row(
        "graphql query not string",
        "POST",
        "/v1/graphql",
        body={"query": 5},
        error="body.query must be a string",
    ),
    Row(
        "graphql variables not object",
        "POST",
        "/v1/graphql",
        body={"query": "{ Get { Doc { t } } }", "variables": [1]},
        error="body.variables must be a JSON object",
    ),
    Row(
        "graphql batch not array",
        "POST",
        "/v1/graphql/batch",
        body={"query": "{}"},
        error="must be a JSON array",
    ),
    Row("graphql batch empty", "POST", "/v1/graphql/batch", body=[], error="body is empty"),
]

ERRORS = [
    Row("object id not uuid", "GET", "/v1/objects/Doc/not-a-uuid", error="is not a UUID"),
    Row(
        "body class mismatch",
        "PUT",
        f"/v1/objects/Doc/{OID}",
        body={"class": "Other"},
        error="does not match the path class",
    ),
    Row(
        "create without class",
        "POST",
        "/v1/objects",
        body={"properties": {}},
        error="body.class must be a string",
    ),
    Row(
        "batch without class",
        "POST",
        "/v1/batch/objects",
        body={"objects": [{}]},
        error="body.objects[0].class",
    ),
    Row(
        "batch empty",
        "POST",
        "/v1/batch/objects",
        body={"objects": []},
        error="body.objects is empty",
    ),
    Row(
        "batch delete no match",
        "DELETE",
        "/v1/batch/objects",
        body={},
        error="body.match must be a JSON object",
    ),
    Row(
        "reference from without class",
        "POST",
        "/v1/batch/references",
        body=[{"from": f"weaviate://localhost/{OID}", "to": f"weaviate://localhost/{REF}"}],
        error="must name the source class",
    ),
    Row(
        "rest search unknown kind",
        "POST",
        "/v1/search/Doc/warp",
        body={},
        error="unrecognised search kind",
    ),
    Row(
        "vector not list",
        "POST",
        "/v1/objects",
        body={"class": "Doc", "vector": "x"},
        error="body.vector must be a JSON array",
    ),
    Row(
        "limit junk",
        "GET",
        "/v1/objects",
        query=[("limit", "1e3")],
        error="query limit must be an integer",
    ),
]

ALL = REST + MCP + GRAPHQL + ERRORS


@pytest.mark.parametrize("row", params(ALL))
def test_weaviate(row: Row) -> None:
    run_rows(classify_weaviate, row, "weaviate")


def test_every_route_has_a_row() -> None:
    from tests.capture.classify.test_corpus import WEAVIATE

    assert_routes_covered(ROUTES, ALL + WEAVIATE)


# ------------------------------------------------------------- GraphQL aliases
#
# An alias renames the response key, so masking by field name or path needs
# the (response key, field name) pairs, at every depth and through fragments;
# ids and vectors are listed where the aliases put them.


def _gql(query: str) -> Classification:
    c = classify_weaviate(
        HttpRequest(method="POST", path="/v1/graphql", body=json.dumps({"query": query}).encode())
    )
    return c


def test_every_alias_is_listed_with_its_field() -> None:
    c = _gql(
        "{ g: Get { d: Doc { s: salary ...F ... on Doc { t: title } "
        "profile { pay: salary } author { ... on Person { n: name } } "
        "a: _additional { i: id v: vector } } } } fragment F on Doc { e: email }"
    )
    assert c.ok, c.error
    assert set(c.field_aliases) == {
        ("g", "Get"), ("d", "Doc"), ("s", "salary"), ("t", "title"), ("e", "email"),
        ("pay", "salary"), ("n", "name"), ("a", "_additional"), ("i", "id"), ("v", "vector"),
    }
    assert c.user_data_paths == (
        "data.g.d[].s", "data.g.d[].e", "data.g.d[].t", "data.g.d[].profile",
        "data.g.d[].author",
    )
    assert c.response_ids == ("data.g.d[].a.i", "data.g.d[]._additional.id")
    assert c.vector_paths == ("data.g.d[].a.v",)
    assert _gql("{ Get { Doc { title } } }").field_aliases == ()


def test_references_and_group_hits_list_their_ids_and_vectors() -> None:
    c = _gql(
        '{ Get { Doc(groupBy:{path:["t"], groups:2, objectsPerGroup:2}) { _prop '
        "author { ... on Person { name _additional { id vector } "
        "org { ... on Org { x: _additional { k: id } } } } } "
        "_additional { distance group { id hits { title _additional { id vectors { v } } } } "
        "answer { result } } } } }"
    )
    assert c.ok, c.error
    assert c.response_ids == (
        "data.Get.Doc[].author[]._additional.id",
        "data.Get.Doc[].author[].org[].x.k",
        "data.Get.Doc[]._additional.group.hits[]._additional.id",
        "data.Get.Doc[]._additional.id",
    )
    assert c.vector_paths == (
        "data.Get.Doc[].author[]._additional.vector",
        "data.Get.Doc[]._additional.group.hits[]._additional.vectors",
    )
    # a property named with one leading underscore is user data; so is every
    # _additional field but the id, the vectors and Weaviate's own numbers
    assert c.user_data_paths == (
        "data.Get.Doc[]._prop", "data.Get.Doc[].author", "data.Get.Doc[]._additional.group",
        "data.Get.Doc[]._additional.answer",
    )


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("{ Get { Doc { _additional: salary } } }", "aliases 'salary' as _additional"),
        ("{ Get { Doc { author { ... on P { _additional: name } } } } }",
         "aliases 'name' as _additional"),
        ("{ Get { Doc { _additional { id: distance } } } }",
         "aliases _additional 'distance' as id"),
        ('{ Get { Doc { _additional { id: generate(singleResult:{prompt:"x"}) '
         "{ singleResult } } } } }", "aliases _additional 'generate' as id"),
        ("{ Get { Doc { ...A } } } fragment A on Doc { ...B ...B ...B ...B ...B ...B } "
         "fragment B on Doc { ...C ...C ...C ...C ...C ...C } "
         "fragment C on Doc { ...D ...D ...D ...D ...D ...D } "
         "fragment D on Doc { ...E ...E ...E ...E ...E ...E } "
         "fragment E on Doc { ...G ...G ...G ...G ...G ...G } "
         "fragment G on Doc { a b c d e f }", "selects more than 20000 fields"),
    ],
)
def test_renames_that_would_hide_user_data_are_refused(query: str, error: str) -> None:
    c = _gql(query)
    assert not c.ok
    assert c.error is not None and error in c.error, c.error


def test_keys_are_read_ignoring_case_as_weaviate_reads_them() -> None:
    """Regression: Weaviate's Go JSON decoder matches keys ignoring case; the
    classifier read exact keys only."""
    def post(body: bytes) -> Classification:
        return classify_weaviate(HttpRequest(method="POST", path="/v1/objects", host="w",
                                             body=body,
                                             headers={"content-type": "application/json"}))

    cls = post(b'{"CLASS": "Secret", "properties": {"a": 1}}')
    assert cls.ok and [op.collection for op in cls.operations] == ["Secret"], cls
    refused = post(b'{"class": "Public", "Class": "Secret", "properties": {"a": 1}}')
    assert not refused.ok and "ignoring case" in (refused.error or "")


# ------------------------------------------- aggregates and groups by property
#
# An aggregate of a property, and the groupedBy value of a groupBy on it,
# answer its values away from its key: each such location is listed in
# field_aliases as (response path, property name), under the query's aliases.


def _values(c: Classification) -> list[tuple[str, str]]:
    return [(k, n) for k, n in c.field_aliases if "." in k or "[" in k or "{" in k]


def test_aggregate_statistics_are_listed_with_their_property() -> None:
    c = _gql(
        "{ Aggregate { Doc { salary { count type minimum maximum mean median mode sum "
        "topOccurrences { value occurs } } active { totalTrue percentageFalse count } "
        "author { pointingTo type } meta { count } } } }"
    )
    assert c.ok, c.error
    base = "data.Aggregate.Doc[]"
    assert _values(c) == [
        *[(f"{base}.salary.{s}", "salary")
          for s in ("minimum", "maximum", "mean", "median", "mode", "sum")],
        (f"{base}.salary.topOccurrences[].value", "salary"),
        (f"{base}.active.totalTrue", "active"),
        (f"{base}.active.percentageFalse", "active"),
        (f"{base}.author.pointingTo", "author"),
    ]
    assert c.user_data_paths == (f"{base}.salary.topOccurrences[].value",)


def test_aggregate_values_are_listed_under_aliases_and_in_batches() -> None:
    c = _gql("{ a: Aggregate { d: Doc(groupBy: \"salary\") { s: salary { t: topOccurrences "
             "{ v: value o: occurs } hi: maximum n: count } g: groupedBy { v: value p: path } "
             "} } }")
    assert c.ok, c.error
    assert _values(c) == [
        ("data.a.d[].s.t[].value", "salary"),
        ("data.a.d[].s.t[].v", "salary"),
        ("data.a.d[].s.hi", "salary"),
        ("data.a.d[].g.v", "salary"),
    ]
    batch = classify_weaviate(HttpRequest(
        method="POST", path="/v1/graphql/batch",
        body=json.dumps([{"query": "{ Aggregate { Doc { n { median } } } }"}]).encode()))
    assert batch.ok and _values(batch) == [("[].data.Aggregate.Doc[].n.median", "n")]


def test_group_by_lists_the_grouped_value_with_every_name_on_its_path() -> None:
    agg = _gql('{ Aggregate { City(groupBy: ["inCountry", "Country", "name"]) '
               "{ groupedBy { value path } meta { count } } } }")
    assert agg.ok, agg.error
    assert _values(agg) == [("data.Aggregate.City[].groupedBy.value", n)
                            for n in ("inCountry", "Country", "name")]
    get = _gql('{ Get { Doc(groupBy: {path: ["email"], groups: 2, objectsPerGroup: 1}) '
               "{ x: _additional { group { g: groupedBy { value } hits { email } } } } } }")
    assert get.ok, get.error
    assert _values(get) == [("data.Get.Doc[].x.group.g.value", "email")]
    # under _additional.group, which is user data already
    assert get.user_data_paths == ("data.Get.Doc[].x.group",)
    # no groupBy: groupedBy values are user data, listed with no property
    plain = _gql("{ Aggregate { Doc { groupedBy { value } } } }")
    assert plain.ok and _values(plain) == []
    assert plain.user_data_paths == ("data.Aggregate.Doc[].groupedBy.value",)


@pytest.mark.parametrize(
    "query",
    [
        "{ Aggregate { Doc(groupBy: 5) { meta { count } } } }",
        "{ Aggregate { Doc(groupBy: []) { meta { count } } } }",
        '{ Get { Doc(groupBy: {groups: 2}) { _additional { group { id } } } } }',
        '{ Get { Doc(groupBy: {path: [1]}) { title } } }',
    ],
)
def test_unreadable_group_by_is_refused(query: str) -> None:
    c = _gql(query)
    assert not c.ok and c.error is not None and "groupBy" in c.error, c.error


def test_rest_aggregate_lists_the_grouped_property() -> None:
    def agg(body: dict[str, object]) -> Classification:
        return classify_weaviate(HttpRequest(method="POST", path="/v1/aggregate/Doc",
                                             body=json.dumps(body).encode()))

    assert agg({"groupBy": "salary"}).field_aliases == (("groups[].groupedBy.value", "salary"),)
    assert agg({"GroupBy": "salary"}).field_aliases == (("groups[].groupedBy.value", "salary"),)
    assert agg({"returnMetrics": ["count", "salary:mean"]}).field_aliases == (("{*}", "salary"),)
    assert agg({}).field_aliases == ()
    assert not agg({"groupBy": ["salary"]}).ok



@pytest.mark.parametrize(("media", "ok"), [
    (None, True), ("application/json", True), ("Application/JSON; charset=utf-8", True),
    ("application/yaml", False), ("application/x-yaml", False), ("text/plain", False),
])
def test_a_body_must_be_json(media: str | None, ok: bool) -> None:
    """Weaviate reads YAML bodies too, matching keys by their exact lower-case
    names: "Variables" is then ignored and the GraphQL variables' defaults
    apply (another tenant, limit and filter than the gateway read; found in
    review). Only a JSON body is classified."""
    from capture.classify import classify
    from capture.types import HttpRequest

    body = {"query": "query Q($t: String = \"hr\") { Get { Doc(tenant: $t) { title } } }",
            "Variables": {"t": "public"}}
    headers = {} if media is None else {"content-type": media}
    c = classify("weaviate", HttpRequest(method="POST", path="/v1/graphql", host="",
                                         body=json.dumps(body).encode(), headers=headers))
    assert c.ok is ok, c.error
    if not ok:
        assert "send it as JSON" in (c.error or "")
