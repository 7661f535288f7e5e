"""schemas/*.json: well-formed draft 2020-12, in agreement with the contract, and matched by what the engine emits."""

from __future__ import annotations

import re
from typing import Any

import fastjsonschema
import orjson
import pytest

from streams.core.events import SCHEMA_DIR, TOPIC_TYPES, load_schema
from streams.core.kpis import Figures, metrics_message
from streams.core.markov import counts_of, markov_messages
from streams.stages.intake import dlq_record

SCHEMA_FILES = sorted(path.stem for path in SCHEMA_DIR.glob("*.json"))
INPUT_KINDS = tuple(TOPIC_TYPES.values())
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Every keyword of draft 2020-12 (core, applicator, validation, unevaluated, format, content, meta-data).
KEYWORDS = {
    "$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "$comment", "$defs",
    "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "prefixItems", "items",
    "contains", "properties", "patternProperties", "additionalProperties", "propertyNames",
    "unevaluatedItems", "unevaluatedProperties",
    "type", "const", "enum", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains", "minContains",
    "maxProperties", "minProperties", "required", "dependentRequired",
    "format", "contentEncoding", "contentMediaType", "contentSchema",
    "title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples",
}
TYPES = {"null", "boolean", "object", "array", "number", "string", "integer"}
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA = ("not", "if", "then", "else", "items", "contains", "additionalProperties", "propertyNames",
             "unevaluatedItems", "unevaluatedProperties", "contentSchema")
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")

# The contract's own examples (CONTRACT.md sections 3 and 4), copied verbatim.
ATTRIBUTION_EXAMPLE = orjson.loads("""
{"conversion_id": "...", "type": "order", "tracking_id": "...", "ts": 1763800000000,
 "revenue": 120.0, "currency": "USD", "model": "last_click",
 "credits": [{"channel": "google_ads", "campaign": "brand", "affiliate_id": null,
              "weight": 1.0, "revenue": 120.0}],
 "commissions": [{"affiliate_id": "...", "role": "converter", "amount": 12.0}]}
""")
METRICS_EXAMPLE = orjson.loads("""
{"channel": "google_ads", "campaign": null,
 "window_start": 1763800000000, "window_end": 1763800060000, "final": false,
 "impressions": 1000, "clicks": 42, "leads": 5.0, "orders": 2.0, "new_customers": 1.0,
 "revenue": 240.0, "spend": 50.0,
 "ctr": 0.042, "cpc": 1.19, "cpm": 50.0, "cpl": 10.0, "cpa": 25.0, "cac": 50.0,
 "conversion_rate": 0.0476, "aov": 120.0, "roas": 4.8, "roi": 3.8}
""")
AFFILIATE_EXAMPLE = orjson.loads("""
{"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
 "commission_rate": 0.10, "assist_fee": 2.0}
""")

# CONTRACT.md section 2: which fields each input type has, and which of them it must have; section 10: `consent`
# on the events of a visitor.
CONTRACT_FIELDS = {
    "impression": {"event_id", "type", "ts", "tracking_id", "consent", "channel", "campaign", "cost", "currency"},
    "click": {"event_id", "type", "ts", "tracking_id", "consent", "channel", "campaign", "cost", "currency",
              "affiliate_id"},
    "lead": {"event_id", "type", "ts", "tracking_id", "consent", "customer_id"},
    "order": {"event_id", "type", "ts", "tracking_id", "consent", "order_id", "revenue", "currency", "promo_code",
              "margin", "customer_id"},
    "spend": {"event_id", "type", "ts", "channel", "campaign", "amount", "currency"},
    "refund": {"event_id", "type", "ts", "order_id", "amount", "currency", "reason"},
}
CONTRACT_REQUIRED = {
    "impression": {"event_id", "type", "ts", "tracking_id", "channel"},
    "click": {"event_id", "type", "ts", "tracking_id", "channel"},
    "lead": {"event_id", "type", "ts", "tracking_id"},
    "order": {"event_id", "type", "ts", "tracking_id", "order_id", "revenue"},
    "spend": {"event_id", "type", "ts", "channel", "amount"},
    "refund": {"event_id", "type", "ts", "order_id"},
}


def validator(kind: str) -> Any:
    return fastjsonschema.compile(load_schema(kind))


def subschemas(schema: dict[str, Any], path: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """The schema and every schema nested in it, with a JSON-pointer-like path."""
    found = [(path, schema)]
    for key in SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key, ())):
            found += subschemas(sub, f"{path}/{key}/{i}")
    for key in SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            found += subschemas(schema[key], f"{path}/{key}")
    for key in SUBSCHEMA_MAPS:
        for name, sub in schema.get(key, {}).items():
            found += subschemas(sub, f"{path}/{key}/{name}")
    return found


def test_the_schema_folder_holds_every_message_kind() -> None:
    assert set(SCHEMA_FILES) >= {*INPUT_KINDS, "attribution", "metrics", "dlq", "affiliate", "markov"}


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_each_schema_declares_draft_2020_12_and_its_own_id(kind: str) -> None:
    schema = load_schema(kind)
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"].endswith(f"/{kind}.json")
    assert schema["type"] == "object" and schema["title"]


def test_schema_ids_are_unique() -> None:
    ids = [load_schema(kind)["$id"] for kind in SCHEMA_FILES]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_each_schema_compiles(kind: str) -> None:
    assert callable(validator(kind))


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_each_schema_uses_only_draft_2020_12_keywords_well_formed(kind: str) -> None:
    for path, schema in subschemas(load_schema(kind)):
        assert isinstance(schema, dict), path
        assert set(schema) <= KEYWORDS, f"{path}: unknown keywords {set(schema) - KEYWORDS}"
        types = schema.get("type")
        if types is not None:
            listed = types if isinstance(types, list) else [types]
            assert listed and set(listed) <= TYPES and len(set(listed)) == len(listed), path
        if "required" in schema:
            required = schema["required"]
            assert isinstance(required, list) and len(set(required)) == len(required), path
            assert set(required) <= set(schema.get("properties", {})), f"{path}: required but undeclared"
        if "enum" in schema:
            assert schema["enum"] and len({orjson.dumps(v) for v in schema["enum"]}) == len(schema["enum"]), path
        if "pattern" in schema:
            re.compile(schema["pattern"])
        for low, high in (("minLength", "maxLength"), ("minimum", "maximum"), ("minItems", "maxItems")):
            if low in schema and high in schema:
                assert schema[low] <= schema[high], path
        for name in ("minLength", "maxLength", "minItems", "maxItems"):
            if name in schema:
                assert isinstance(schema[name], int) and schema[name] >= 0, path
        assert not isinstance(schema.get("items"), list), f"{path}: tuple items are prefixItems in 2020-12"
        assert "definitions" not in schema and "dependencies" not in schema, f"{path}: pre-2019 keyword"


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_each_input_schema_declares_the_contract_fields_of_its_type(kind: str) -> None:
    schema = load_schema(kind)
    assert set(schema["properties"]) == CONTRACT_FIELDS[kind]
    assert set(schema["required"]) == CONTRACT_REQUIRED[kind]
    assert schema["properties"]["type"] == {"const": kind}


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_each_input_schema_keeps_unknown_extra_fields(kind: str) -> None:
    assert load_schema(kind).get("additionalProperties", True) is True


def test_the_contract_attribution_example_validates() -> None:
    validator("attribution")(ATTRIBUTION_EXAMPLE)


def test_the_contract_metrics_example_validates() -> None:
    validator("metrics")(METRICS_EXAMPLE)


def test_the_contract_affiliate_example_validates() -> None:
    validator("affiliate")(AFFILIATE_EXAMPLE)


def test_the_attribution_schema_rejects_a_credit_weight_over_one() -> None:
    bad = {**ATTRIBUTION_EXAMPLE, "credits": [{**ATTRIBUTION_EXAMPLE["credits"][0], "weight": 1.5}]}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator("attribution")(bad)


def test_the_metrics_schema_requires_every_contract_figure() -> None:
    for name in METRICS_EXAMPLE:
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            validator("metrics")({k: v for k, v in METRICS_EXAMPLE.items() if k != name})


@pytest.mark.parametrize(
    "figures",
    [Figures(),
     Figures(1000, 42, 5.0, 2.0, 1.0, 240.0, 50.0, 96.0),
     Figures(3, 1, 1 / 3, 2 / 3, 1 / 3, 80.0, 0.0, 80.0)],
)
@pytest.mark.parametrize("campaign", [None, "brand"])
def test_a_metrics_message_validates_against_metrics_json(figures: Figures, campaign: str | None) -> None:
    message = metrics_message("google_ads", campaign, 1763800000000, 60_000, False, figures)
    validator("metrics")(orjson.loads(orjson.dumps(message)))


def test_a_final_metrics_message_validates_against_metrics_json() -> None:
    validator("metrics")(metrics_message("email", None, 0, 60_000, True, Figures(clicks=3, spend=1.5)))


@pytest.mark.parametrize(
    ("raw", "index"),
    [(b'{"event_id": "e1", "type": "click"}', None), (b"[1, 2]", 1), (b"\xff\xfe not utf-8", None), (None, None)],
)
def test_a_dlq_record_validates_against_dlq_json(raw: bytes | None, index: int | None) -> None:
    record = orjson.loads(dlq_record("missing required field(s): ts", "clicks", 3, 1234, index, raw))
    validator("dlq")(record)
    assert record["index"] == index and record["topic"] == "clicks" and record["offset"] == 1234


def test_a_dlq_record_carries_the_raw_value_as_text() -> None:
    raw = orjson.dumps([{"event_id": "e1"}, {"event_id": ""}])
    assert orjson.loads(dlq_record("x", "clicks", 0, 0, 1, raw))["value"] == raw.decode()



# CONTRACT.md section 8, copied verbatim.
MARKOV_EXAMPLE = orjson.loads("""
{"channel": "google_ads", "removal_effect": 0.41, "share": 0.23,
 "conversions": 198.4, "revenue": 39950.0, "paths": 3000,
 "converting_paths": 863, "null_paths": 2137, "computed_at": 1763800000000}
""")


def test_the_contract_markov_example_validates() -> None:
    validator("markov")(MARKOV_EXAMPLE)


def test_the_markov_schema_requires_every_contract_figure() -> None:
    for name in MARKOV_EXAMPLE:
        with pytest.raises(fastjsonschema.JsonSchemaValueException):
            validator("markov")({k: v for k, v in MARKOV_EXAMPLE.items() if k != name})


def test_markov_messages_validate_against_markov_json() -> None:
    counts = counts_of([(["a", "b"], True, 30.0), (["a"], False, 0.0), (["b", "b"], True, 60.0), (["c"], False, 0.0)])
    messages = markov_messages(counts, 1763800000000)
    assert [m["channel"] for m in messages] == ["a", "b", "c"]
    for message in messages:
        validator("markov")(orjson.loads(orjson.dumps(message)))


def test_the_attribution_schema_names_markov_as_a_model() -> None:
    validator("attribution")({**ATTRIBUTION_EXAMPLE, "model": "markov"})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validator("attribution")({**ATTRIBUTION_EXAMPLE, "model": "shapley"})
