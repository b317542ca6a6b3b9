#!/usr/bin/python3
"""Checks the fhirx message schemas, their examples and the deliberately invalid examples.

usage: check_examples.py [SCHEMAS_DIR]     (default: schemas/ of this source tree)

1. Every SCHEMAS_DIR/*.schema.json is a valid draft 2020-12 schema
   (Draft202012Validator.check_schema), declares that draft, and has "$id"
   https://fhirx.dev/schemas/<file name>, a title and a description.
2. House style, for every schema but job.schema.json (older): every property has a
   description, and every object schema that lists properties says additionalProperties
   (false, except where a schema documents why it allows more).
3. parking.headers.schema.json has every dead-letter header (and requires what the dead
   letter requires) plus fhirx-parked-reason.
4. Every SCHEMAS_DIR/examples/NAME.json or NAME-VARIANT.json validates against
   NAME.schema.json (NAME: the longest schema name that fits), and every message schema
   has at least one example.
5. Every tests/schemas/invalid/*.json (same naming) is rejected, for the reason INVALID
   below names (a substring of one of its errors), so an example cannot pass this check by
   being broken in some other way.

Prints one line per file checked and a closing 'N passed, N failed' line; exits 1 on any
failure.
"""
import json
import os
import sys

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fhirx_schemas  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
INVALID_DIR = os.path.join(HERE, "invalid")
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Schemas that describe no message on their own.
NOT_MESSAGES = {"common"}
# Older than the house style checks; checked for validity only.
STYLE_EXEMPT = {"job"}

# invalid/<file> -> a substring of one of the errors it must be rejected with.
INVALID = {
    "result-bundle.json": "resourceType",
    "result-bad-id.json": "id: ",
    "result-dot-id.json": "id: ",
    "result.headers-attempt-zero.json": "fhirx-attempt",
    "result.headers-url-with-values.json": "fhirx-source-url",
    "result.headers-no-patient-via-search.json": "'search' is not one of ['reference', 'bulk']",
    "result.headers-fetched-at-offset.json": "fhirx-fetched-at",
    "result.headers-unknown-header.json": "'fhirx-trace' was unexpected",
    "failure-bad-class.json": "error_class",
    "failure-transient-false.json": "transient",
    "failure-null-tenant-scope.json": "error_class",
    "failure-bearer-in-message.json": "message",
    "failure-zero-attempts.json": "attempts",
    "dlq.headers-reason-too-long.json": "fhirx-reason",
    "dlq.headers-missing-offset.json": "'fhirx-original-offset' is a required property",
    "dlq.headers-omitted-not-invalid-job.json": "'invalid_job' was expected",
    "status-completed-with-failures.json": "failures",
    "status-partial-nothing-published.json": "resources",
    "status-bulk-negative-patient-resources.json": "-1 is less than the minimum of 0",
    "status-full-types-without-since.json": "full_types",
    "status-negative-duration.json": "duration_ms",
    "status-negative-failures-not-recorded.json": "-1 is less than the minimum of 0",
    "parking.headers-no-reason.json": "'fhirx-parked-reason' is a required property",
    "job-bulk-with-patients.json": "patients: False schema",
    "job-bulk-with-tasks.json": "tasks: False schema",
    "job-bulk-no-group.json": "'group' is a required property",
    "job-bulk-bad-group.json": "group: ",
    "job-resources-not-r4.json": "'Pet' is not one of",
    "status-bulk-per-patient-no-types.json": "per_patient",
    "job-bulk-type-filter-comma.json": "type_filter/0: ",
    "job-bulk-type-filter-no-type.json": "type_filter/0: ",
    "job-patients-with-group.json": "group: False schema",
    "job-patients-with-type-filter.json": "type_filter: False schema",
    "job-kind-unknown.json": "kind: 'system' is not one of",
}


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what):
        self.passed += 1
        print(f"ok   {what}")

    def fail(self, what, why):
        self.failed += 1
        print(f"FAIL {what}: {why}")


def schema_name_for(file_name, names):
    """Longest schema name N with file_name == N.json or N-*.json, else None."""
    stem = file_name[:-len(".json")]
    fits = [n for n in names if stem == n or stem.startswith(n + "-")]
    return max(fits, key=len) if fits else None


def walk_subschemas(node, path=""):
    """Yields (path, subschema) for every dict reachable in a schema."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk_subschemas(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_subschemas(v, f"{path}/{i}")


def style_problems(schema):
    problems = []
    for path, sub in walk_subschemas(schema):
        props = sub.get("properties")
        if not isinstance(props, dict) or path.endswith("/properties"):
            continue
        # An if/then/not clause that only narrows properties defined elsewhere is not an object schema.
        is_clause = any(path.endswith(s) or f"{s}/" in path for s in ("/if", "/then", "/else", "/not"))
        if not is_clause and "additionalProperties" not in sub:
            problems.append(f"{path or '(root)'} lists properties without saying additionalProperties")
        for name, prop in props.items():
            if not is_clause and isinstance(prop, dict) and "description" not in prop:
                problems.append(f"{path}/properties/{name} has no description")
    return problems


def main(argv):
    schemas_dir = os.path.abspath(argv[1] if len(argv) > 1 else fhirx_schemas.default_dir())
    c = Checks()
    schemas = fhirx_schemas.Schemas(schemas_dir)
    names = sorted(schemas.by_name)
    broken = set()

    for name in names:
        schema = schemas.by_name[name]
        what = f"schema {name}.schema.json"
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            broken.add(name)
            c.fail(what, f"not a valid draft 2020-12 schema: {fhirx_schemas.describe(e)}")
            continue
        problems = []
        if schema.get("$schema") != DRAFT:
            problems.append(f"$schema is not {DRAFT}")
        if schema.get("$id") != f"{fhirx_schemas.ID_BASE}{name}{fhirx_schemas.SUFFIX}":
            problems.append(f"$id is not {fhirx_schemas.ID_BASE}{name}{fhirx_schemas.SUFFIX}")
        for k in ("title", "description"):
            if not schema.get(k):
                problems.append(f"no {k}")
        if name not in STYLE_EXEMPT:
            problems += style_problems(schema)
        # Every $ref must resolve (a typo would only surface when an instance reaches it).
        resolver = schemas.validator(name).resolver
        for path, sub in walk_subschemas(schema):
            ref = sub.get("$ref")
            if isinstance(ref, str):
                try:
                    resolver.resolve(ref)
                except Exception as e:  # RefResolutionError and friends
                    broken.add(name)
                    problems.append(f"{path}/$ref {ref!r} does not resolve: {e}")
        if problems:
            c.fail(what, "; ".join(problems))
        else:
            c.ok(what)

    if "dlq.headers" in schemas.by_name and "parking.headers" in schemas.by_name:
        dlq, parking = schemas.by_name["dlq.headers"], schemas.by_name["parking.headers"]
        missing = sorted(set(dlq["properties"]) - set(parking["properties"]))
        unrequired = sorted(set(dlq["required"]) - set(parking["required"]))
        extra = sorted(set(parking["properties"]) - set(dlq["properties"]))
        if missing or unrequired or extra != ["fhirx-parked-reason"]:
            c.fail("parking headers = dead-letter headers + fhirx-parked-reason",
                   f"missing {missing}, not required {unrequired}, extra {extra}")
        else:
            c.ok("parking headers = dead-letter headers + fhirx-parked-reason")

    examples_dir = os.path.join(schemas_dir, "examples")
    covered = set()
    for entry in sorted(os.listdir(examples_dir)):
        if not entry.endswith(".json"):
            continue
        what = f"example {entry}"
        name = schema_name_for(entry, names)
        if name is None:
            c.fail(what, "no schema NAME.schema.json fits (name examples NAME.json or NAME-VARIANT.json)")
            continue
        if name in broken:
            c.fail(what, f"not checked: {name}.schema.json is broken (above)")
            continue
        try:
            with open(os.path.join(examples_dir, entry), encoding="utf-8") as f:
                doc = json.load(f)
        except ValueError as e:
            c.fail(what, f"not JSON: {e}")
            continue
        errors = schemas.errors(name, doc, limit=5)
        if errors:
            c.fail(what, f"invalid against {name}.schema.json: " + "; ".join(errors))
        else:
            covered.add(name)
            c.ok(f"{what} against {name}.schema.json")
    for name in names:
        if name not in NOT_MESSAGES and name not in covered:
            c.fail(f"schema {name}.schema.json", "has no valid example in examples/")

    files = sorted(e for e in os.listdir(INVALID_DIR) if e.endswith(".json"))
    for entry in sorted(set(INVALID) - set(files)):
        c.fail(f"invalid example {entry}", "listed in INVALID but missing from tests/schemas/invalid/")
    for entry in files:
        what = f"invalid example {entry}"
        if entry not in INVALID:
            c.fail(what, "not listed in check_examples.py INVALID (say which error it must be rejected with)")
            continue
        name = schema_name_for(entry, names)
        if name is None:
            c.fail(what, "no schema fits its name")
            continue
        if name in broken:
            c.fail(what, f"not checked: {name}.schema.json is broken (above)")
            continue
        with open(os.path.join(INVALID_DIR, entry), encoding="utf-8") as f:
            doc = json.load(f)
        errors = schemas.errors(name, doc, limit=20)
        if not errors:
            c.fail(what, f"accepted by {name}.schema.json")
        elif not any(INVALID[entry] in e for e in errors):
            c.fail(what, f"rejected, but not for {INVALID[entry]!r}: " + "; ".join(errors))
        else:
            c.ok(f"{what} rejected by {name}.schema.json ({next(e for e in errors if INVALID[entry] in e)})")

    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
