"""Loads the fhirx message schemas (schemas/*.schema.json) and builds validators.

Shared by check_examples.py, validate_topics.py and validator_selftest.py. Only
the Python standard library and Debian's python3-jsonschema (4.10) are used.

The schemas refer to each other by relative "$ref" (common.schema.json#/$defs/...,
dlq.headers.schema.json#/properties/...), resolved against each schema's "$id"
under https://fhirx.dev/schemas/; nothing is fetched: every schema of the
directory is put in the resolver's store.
"""
import json
import os

from jsonschema import Draft202012Validator, RefResolver
from jsonschema.exceptions import RefResolutionError, best_match

ID_BASE = "https://fhirx.dev/schemas/"
SUFFIX = ".schema.json"


def default_dir():
    """schemas/ of the source tree this file is in (tests/schemas/ -> ../../schemas)."""
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas"))


def _refuse(uri):
    raise RefResolutionError(f"{uri} is not a schema of this directory (nothing is fetched)")


# A $ref to a schema outside the directory fails instead of going to the network.
NO_FETCH = {"http": _refuse, "https": _refuse, "file": _refuse}


class Schemas:
    """Every NAME.schema.json of a directory, by NAME (e.g. "result.headers")."""

    def __init__(self, directory):
        self.directory = directory
        self.by_name = {}
        self.paths = {}
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(SUFFIX):
                continue
            path = os.path.join(directory, entry)
            with open(path, encoding="utf-8") as f:
                try:
                    schema = json.load(f)
                except ValueError as e:
                    raise SystemExit(f"{path}: not valid JSON: {e}")
            name = entry[: -len(SUFFIX)]
            self.by_name[name] = schema
            self.paths[name] = path
        if not self.by_name:
            raise SystemExit(f"{directory}: no *{SUFFIX} files")
        self.store = {}
        for name, schema in self.by_name.items():
            self.store[schema.get("$id", ID_BASE + name + SUFFIX)] = schema
        self._validators = {}

    def validator(self, name):
        if name not in self._validators:
            if name not in self.by_name:
                raise SystemExit(f"{self.directory}: no {name}{SUFFIX}")
            schema = self.by_name[name]
            resolver = RefResolver.from_schema(schema, store=self.store, handlers=NO_FETCH)
            self._validators[name] = Draft202012Validator(schema, resolver=resolver)
        return self._validators[name]

    def errors(self, name, instance, limit=3):
        """Up to limit readable problems of instance against schema name, [] if valid."""
        out = []
        try:
            for error in self.validator(name).iter_errors(instance):
                out.append(describe(best_match([error])))
                if len(out) >= limit:
                    break
        except RefResolutionError as e:
            raise SystemExit(f"{self.paths[name]}: a $ref does not resolve: {e}")
        return out


def describe(error, width=240):
    """'path: message' for a jsonschema error, shortened (messages quote the instance)."""
    path = "/".join(str(p) for p in error.absolute_path)
    message = error.message
    if len(message) > width:
        message = message[: width - 3] + "..."
    return f"{path or '(root)'}: {message}"
