#!/usr/bin/python3
"""Validates every message of the fhirx output topics against schemas/ (see schemas/README.md).

usage: validate_topics.py --bootstrap HOSTS [--schemas DIR] [--timeout S] [--expect-status N]
                          [--topics results,failures,dlq,status] [--prefix fhirx.]
                          [--check-jobs] [--summary-json PATH] [--max-violations N]

Run it with /usr/bin/python3 (Debian's python3-jsonschema and python3-confluent-kafka).

Reads each topic ({prefix}{name}: fhirx.results, fhirx.failures, fhirx.dlq, fhirx.status,
fhirx.parking) from the beginning: every partition is assigned (no consumer group joins,
nothing is committed) and read up to the high watermark captured at start. With
--expect-status N it first waits until N messages are in the status topic, then captures
the watermarks of every topic again and reads to them (the status of a job attempt is
produced after all its other outputs were acknowledged, so they are all there by then).

Per message it checks the key format, the value and the headers against the schemas
(a dead letter's value against job.schema.json unless it is the original bytes of an
invalid job) and the invariants one message can show: a result's key is
{fhirx-tenant}/{resourceType}/{id}; a failure's key is {tenant}/{job_id}; a dead letter's
key is its fhirx-job-id (and a surrogate names its original position); a status's key is
its job_id, its resources the sum of its counts (a bulk status's patients, counts.Patient and
bulk.patient_resources agree); timestamps are real instants, in order; no
header appears twice, and a failure's or status's fhirx-job-id, fhirx-tenant and fhirx-attempt
headers, which are optional, agree with its value.

--check-jobs adds invariants across topics, sound when every job whose outputs are in the
topics has finished (tests that ran jobs to completion): every result, failure and dead
letter has a status for its (job_id, attempt); a status is backed by at least as many result
messages (per type) and failure messages as it counts; a completed job has no failure or dead
letter; a job has a dead letter exactly when tasks failed or it could not run at all, and the
dead letter names as many tasks as failed.

Prints one line per topic and every violation (topic, partition, offset, key, what failed);
exits 0 when all is well, 1 on any violation or when the expected messages did not arrive
within --timeout, 2 on a usage or connection error. --summary-json writes the counts per
topic, per status state, results per type, failure and dead-letter classes, and per job its
result keys, failure and dead-letter counts and statuses, for tests to compare (written
whatever the outcome).
"""
import argparse
import collections
import datetime
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fhirx_schemas  # noqa: E402

TOPIC_NAMES = ("results", "failures", "dlq", "status", "parking", "bulk")
DEFAULT_TOPICS = "results,failures,dlq,status"

TENANT = r"[A-Za-z0-9._-]{1,64}"
RESOURCE_TYPE = r"[A-Z][A-Za-z]{1,63}"
FHIR_ID = r"(?!\.\.?$)[A-Za-z0-9._~-]{1,256}"  # fhirx's id rule (worker/model/resources.h)
JOB_ID = r"[A-Za-z0-9._:-]{1,128}"
SURROGATE = r"offset:([A-Za-z0-9._-]{1,249})/(0|[1-9][0-9]{0,9})/(0|[1-9][0-9]{0,18})"
RESULT_KEY = re.compile(rf"^({TENANT})/({RESOURCE_TYPE})/({FHIR_ID})$")
FAILURE_KEY = re.compile(rf"^({TENANT})?/({JOB_ID}|{SURROGATE})$")
JOB_KEY = re.compile(rf"^(?:{JOB_ID}|{SURROGATE})$")
SURROGATE_RE = re.compile(rf"^{SURROGATE}$")

# Error classes for which a job could not run at all: a dead letter without failed tasks.
JOB_LEVEL_CLASSES = ("invalid_job", "unknown_tenant")


def instant(text):
    """datetime of a schema 'timestamp' (pattern already checked), None if not a real date."""
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return None


def surrogate_of(topic, partition, offset):
    return f"offset:{topic}/{partition}/{offset}"


def narrowed_tasks(job):
    """Patient x type tasks a (valid) job names, or None when its types are the tenant's default
    or it is a bulk job (a Group $export: no tasks, replayed whole)."""
    if job.get("kind") == "bulk":
        return None
    if "tasks" in job:
        return sum(len(t["resources"]) for t in job["tasks"])
    if "resources" in job:
        return len(job["patients"]) * len(job["resources"])
    return None


class MessageChecker:
    """Checks one message at a time; pure (no Kafka), so tests can call it directly.

    check(kind, key, value, headers) -> (problems, info): kind is one of TOPIC_NAMES, key
    and value are bytes or None, headers a list of (name, bytes or None) as Kafka gives
    them. problems is a list of sentences (empty when the message is valid); info holds
    what the cross-topic checks and the summary need."""

    def __init__(self, schemas):
        self.s = schemas

    def check(self, kind, key, value, headers):
        problems = []
        info = {"kind": kind}
        key_text = self._key(key, problems)
        info["key"] = key_text
        hdrs = self._headers(headers, problems)
        if kind in ("results", "dlq", "parking"):
            schema = {"results": "result.headers", "dlq": "dlq.headers", "parking": "parking.headers"}[kind]
            problems += [f"headers {p}" for p in self.s.errors(schema, hdrs)]
        getattr(self, "_" + kind)(key_text, value, hdrs, problems, info)
        return problems, info

    # -- parts -------------------------------------------------------------------------

    @staticmethod
    def _key(key, problems):
        if key is None:
            problems.append("the message has no key")
            return None
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"the key is not UTF-8: {key[:80]!r}")
            return None

    @staticmethod
    def _headers(headers, problems):
        out = {}
        seen = collections.Counter(name for name, _ in (headers or []))
        for name, n in sorted(seen.items()):
            if n > 1:
                problems.append(f"header {name} appears {n} times (each header at most once)")
        for name, raw in headers or []:
            if raw is None:
                problems.append(f"header {name} has no value")
                continue
            try:
                out[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"header {name} is not UTF-8: {raw[:80]!r}")
        return out

    @staticmethod
    def _json(value, what, problems):
        if not value:
            problems.append(f"the value is empty ({what} expected)")
            return None
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"the value is not JSON ({what} expected): {e}")
            return None

    def _value(self, schema, value, what, problems):
        doc = self._json(value, what, problems)
        if doc is None:
            return None
        errors = self.s.errors(schema, doc)
        problems += [f"value {p}" for p in errors]
        return None if errors else doc

    # -- topics ------------------------------------------------------------------------

    def _results(self, key, value, h, problems, info):
        v = self._value("result", value, "a FHIR resource", problems)
        m = RESULT_KEY.match(key) if key is not None else None
        if key is not None and not m:
            problems.append(f"key {key!r} is not {{tenant}}/{{resourceType}}/{{id}}")
        if m and "fhirx-tenant" in h and m.group(1) != h["fhirx-tenant"]:
            problems.append(f"key {key!r} does not start with the fhirx-tenant header {h['fhirx-tenant']!r}")
        if m and v is not None and (m.group(2), m.group(3)) != (v["resourceType"], v["id"]):
            problems.append(f"key {key!r} does not match the value's resourceType/id "
                            f"{v['resourceType']}/{v['id']}")
        if "fhirx-fetched-at" in h and instant(h["fhirx-fetched-at"]) is None:
            problems.append(f"header fhirx-fetched-at {h['fhirx-fetched-at']!r} is not a real instant")
        info.update(job_id=h.get("fhirx-job-id"), attempt=_int(h.get("fhirx-attempt")),
                    resource_type=v["resourceType"] if v else (m.group(2) if m else None))

    def _failures(self, key, value, h, problems, info):
        v = self._value("failure", value, "a failure record", problems)
        if key is not None and not FAILURE_KEY.match(key):
            problems.append(f"key {key!r} is not {{tenant}}/{{job_id}} (an empty tenant when unknown)")
        if v is None:
            return
        expected = f"{v['tenant'] or ''}/{v['job_id']}"
        if key is not None and key != expected:
            problems.append(f"key {key!r} does not match the value's tenant/job_id {expected!r}")
        self._surrogate(v["job_id"], v["source"]["topic"], v["source"]["partition"], v["source"]["offset"],
                        "source", problems)
        self._echoes(h, v, problems)
        if v["reference"] and v["resource_type"] and v["reference"].split("/")[0] != v["resource_type"]:
            problems.append(f"reference {v['reference']} is not of resource_type {v['resource_type']}")
        if instant(v["time"]) is None:
            problems.append(f"time {v['time']!r} is not a real instant")
        info.update(job_id=v["job_id"], attempt=v["attempt"], error_class=v["error_class"])

    def _dlq(self, key, value, h, problems, info):
        if key is not None and not JOB_KEY.match(key):
            problems.append(f"key {key!r} is neither a job_id nor offset:{{topic}}/{{partition}}/{{offset}}")
        if key is not None and "fhirx-job-id" in h and key != h["fhirx-job-id"]:
            problems.append(f"key {key!r} is not the fhirx-job-id header {h['fhirx-job-id']!r}")
        if key is not None and all(n in h for n in ("fhirx-original-topic", "fhirx-original-partition",
                                                     "fhirx-original-offset")):
            self._surrogate(key, h["fhirx-original-topic"], h["fhirx-original-partition"],
                            h["fhirx-original-offset"], "fhirx-original-* headers", problems)
        first, last = instant(h.get("fhirx-first-failure")), instant(h.get("fhirx-last-failure"))
        for name, t in (("fhirx-first-failure", first), ("fhirx-last-failure", last)):
            if name in h and t is None:
                problems.append(f"header {name} {h[name]!r} is not a real instant")
        if first and last and last < first:
            problems.append(f"fhirx-last-failure {h['fhirx-last-failure']} is before "
                            f"fhirx-first-failure {h['fhirx-first-failure']}")
        error_class = h.get("fhirx-error-class")
        attempt = _int(h.get("fhirx-attempt"))
        info.update(job_id=key, attempt=attempt, error_class=error_class, tasks=None, valid_job=False)
        if "fhirx-value-omitted" in h:
            if value:
                problems.append(f"fhirx-value-omitted is set but the value has {len(value)} bytes")
            return
        job, why = None, None
        try:
            job = json.loads(value) if value else None
        except (ValueError, UnicodeDecodeError) as e:
            why = f"not JSON: {e}"
        if job is None and why is None:
            why = "empty"
        if job is not None:
            errors = self.s.errors("job", job)
            if errors:
                why, job = f"not a valid job: {errors[0]}", None
        if job is None:
            # Only an invalid job is dead-lettered as its original bytes, which have no schema.
            if error_class is not None and error_class != "invalid_job":
                problems.append(f"the value is {why}; only an invalid_job dead letter carries the original "
                                f"bytes, but fhirx-error-class is {error_class}")
            return
        info.update(valid_job=True, tasks=narrowed_tasks(job), tenant=job["tenant"])
        if key is not None and key != job["job_id"]:
            problems.append(f"key {key!r} is not the value's job_id {job['job_id']!r}")
        if "fhirx-tenant" not in h:
            problems.append(f"header fhirx-tenant is missing although the value names tenant {job['tenant']!r}")
        elif h["fhirx-tenant"] != job["tenant"]:
            problems.append(f"header fhirx-tenant {h['fhirx-tenant']!r} is not the value's tenant {job['tenant']!r}")
        if attempt is not None and job.get("attempt", 1) != attempt:
            problems.append(f"header fhirx-attempt {attempt} is not the value's attempt {job.get('attempt', 1)}")

    _parking = _dlq

    def _bulk(self, key, value, h, problems, info):
        v = self._value("bulk", value, "a bulk progress record", problems)
        if v is not None and key is not None and key != v["job_id"]:
            problems.append(f"key {key!r} is not the value's job_id {v['job_id']!r}")
        if v is not None and v["job"].get("kind") != "bulk":
            problems.append("the progress record's job is not a bulk job")
        if v is not None and v["job"]["job_id"] != v["job_id"]:
            problems.append(f"the progress record's job has job_id {v['job']['job_id']!r}, not {v['job_id']!r}")

    def _status(self, key, value, h, problems, info):
        v = self._value("status", value, "a status record", problems)
        if key is not None and not JOB_KEY.match(key):
            problems.append(f"key {key!r} is neither a job_id nor offset:{{topic}}/{{partition}}/{{offset}}")
        if v is None:
            try:  # an invalid status still tells which job attempt it is about
                raw = json.loads(value)
                info.update(job_id=raw.get("job_id"), attempt=raw.get("attempt", 1))
            except (TypeError, ValueError, AttributeError):
                pass
            return
        if key is not None and key != v["job_id"]:
            problems.append(f"key {key!r} is not the value's job_id {v['job_id']!r}")
        self._surrogate(v["job_id"], v["source"]["topic"], v["source"]["partition"], v["source"]["offset"],
                        "source", problems)
        self._echoes(h, v, problems)
        total = sum(v["counts"].values())
        if v["resources"] != total:
            problems.append(f"resources is {v['resources']} but counts add up to {total}")
        pr = (v.get("bulk") or {}).get("patient_resources")
        if pr is not None and not (pr == v["patients"] == v["counts"].get("Patient", 0)):
            problems.append(f"bulk.patient_resources {pr}, patients {v['patients']} and counts.Patient "
                            f"{v['counts'].get('Patient', 0)} differ (all are the Patient resources exported)")
        if v["tasks_failed"] > v["tasks"]:
            problems.append(f"tasks_failed {v['tasks_failed']} is more than tasks {v['tasks']}")
        # A bulk export that failed counts all its tasks (files) failed and has one failure
        # record for the export (schemas/README.md "Counts").
        bulk_failed = v.get("bulk") is not None and v["tasks_failed"] == v["tasks"] and v["failures"] >= 1
        if v["failures"] < v["tasks_failed"] and not bulk_failed:
            problems.append(f"failures {v['failures']} is fewer than tasks_failed {v['tasks_failed']} "
                            "(each failed task has a failure record)")
        if v.get("failures_not_recorded", 0) > 0 and v["failures"] == 0:
            problems.append(f"failures_not_recorded {v['failures_not_recorded']} with no failure "
                            "record (only failures past a cap go unrecorded)")
        started, finished = instant(v["started_at"]), instant(v["finished_at"])
        if started is None or finished is None:
            problems.append("started_at or finished_at is not a real instant")
        elif finished < started:
            problems.append(f"finished_at {v['finished_at']} is before started_at {v['started_at']}")
        if problems:
            info.update(job_id=v["job_id"], attempt=v["attempt"])
        else:
            info.update(job_id=v["job_id"], attempt=v["attempt"], status=v)

    @staticmethod
    def _echoes(h, v, problems):
        """Failures and statuses have no headers defined, but where a producer adds the
        result headers that name the job, they must agree with the value."""
        for name, field in (("fhirx-job-id", "job_id"), ("fhirx-tenant", "tenant"), ("fhirx-attempt", "attempt")):
            if name in h and (v[field] is None or h[name] != str(v[field])):
                problems.append(f"header {name} {h[name]!r} disagrees with the value's {field} {v[field]!r}")

    @staticmethod
    def _surrogate(job_id, topic, partition, offset, where, problems):
        if SURROGATE_RE.match(job_id) and job_id != surrogate_of(topic, partition, offset):
            problems.append(f"surrogate job id {job_id!r} does not name the job's position in {where} "
                            f"({surrogate_of(topic, partition, offset)})")


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


class Report:
    """Collects violations, per-topic counts and what the summary and --check-jobs need."""

    def __init__(self, max_violations):
        self.max = max_violations
        self.violations = []
        self.count = 0
        self.topics = {}
        self.statuses = {}  # (job_id, attempt) -> (status, where), the last read wins
        self.invalid_statuses = set()  # (job_id, attempt) of statuses that failed their checks
        self.results = collections.defaultdict(list)  # (job_id, attempt) -> [(key, type, where)]
        self.failures = collections.defaultdict(list)  # (job_id, attempt) -> [where]
        self.dead = collections.defaultdict(list)  # (job_id, attempt) -> [(info, where)]
        self.parked = collections.Counter()  # job_id -> n
        self.failure_classes = collections.Counter()
        self.dead_classes = collections.Counter()
        self.results_per_type = collections.Counter()

    def violation(self, where, what):
        self.count += 1
        topic = where.split(" ", 1)[0]
        if topic in self.topics:
            self.topics[topic]["violations"] += 1
        line = f"VIOLATION {where}: {what}"
        if len(self.violations) < self.max:
            self.violations.append(line)
            print(line, file=sys.stderr, flush=True)

    def add(self, topic, kind, where, problems, info):
        self.topics[topic]["messages"] += 1
        for p in problems:
            self.violation(where, p)
        job = (info.get("job_id"), info.get("attempt"))
        if info.get("job_id") is None:
            return
        if kind == "status" and "status" not in info:
            self.invalid_statuses.add(job)  # reported; its job's other messages are not blamed for it
            return
        if kind == "results":
            self.results[job].append((info["key"], info.get("resource_type"), where))
            if info.get("resource_type"):
                self.results_per_type[info["resource_type"]] += 1
        elif kind == "failures":
            self.failures[job].append(where)
            self.failure_classes[info["error_class"]] += 1
        elif kind == "dlq":
            self.dead[job].append((info, where))
            if info.get("error_class"):
                self.dead_classes[info["error_class"]] += 1
        elif kind == "parking":
            self.parked[info["job_id"]] += 1
        elif kind == "status":
            self.statuses[job] = (info["status"], where)

    def check_jobs(self):
        """Invariants across topics (--check-jobs); see the module docstring."""
        for what, table in (("result", self.results), ("failure", self.failures), ("dead letter", self.dead)):
            for job, items in table.items():
                if job not in self.statuses and job not in self.invalid_statuses:
                    where = items[0][-1] if isinstance(items[0], tuple) else items[0]
                    self.violation(where, f"{len(items)} {what} message(s) of job {job[0]!r} attempt {job[1]} "
                                          "but no status for that attempt")
        for job, (st, where) in self.statuses.items():
            results = self.results.get(job, [])
            per_type = collections.Counter(t for _, t, _ in results)
            if len(results) < st["resources"]:
                self.violation(where, f"status says {st['resources']} resources were published but "
                                      f"{len(results)} result messages carry job {job[0]!r} attempt {job[1]}")
            for rtype, n in sorted(st["counts"].items()):
                if per_type[rtype] < n:
                    self.violation(where, f"status counts {n} {rtype} but {per_type[rtype]} {rtype} results "
                                          f"carry job {job[0]!r} attempt {job[1]}")
            nfail = len(self.failures.get(job, []))
            if nfail < st["failures"]:
                self.violation(where, f"status says {st['failures']} failures but {nfail} failure records "
                                      f"carry job {job[0]!r} attempt {job[1]}")
            dead = self.dead.get(job, [])
            if st["state"] == "completed":
                for fwhere in self.failures.get(job, []) + [d for _, d in dead]:
                    self.violation(fwhere, f"a failure or dead letter of job {job[0]!r} attempt {job[1]}, "
                                           f"whose status is completed ({where})")
            needs_dead = st["tasks_failed"] > 0 or (st["state"] == "failed" and st["error_class"] in JOB_LEVEL_CLASSES)
            if needs_dead and not dead:
                self.violation(where, f"job {job[0]!r} attempt {job[1]} has {st['tasks_failed']} failed tasks "
                                      f"(error class {st['error_class']}) but no dead letter")
            if not needs_dead and dead and st["state"] != "completed":
                self.violation(dead[0][1], f"dead letter for job {job[0]!r} attempt {job[1]} whose status has "
                                           "no failed task and no job-level failure (failures of references "
                                           "alone are not dead-lettered)")
            for info, dwhere in dead:
                if st["tasks_failed"] > 0 and info.get("tasks") is not None and info["tasks"] != st["tasks_failed"]:
                    self.violation(dwhere, f"the dead letter names {info['tasks']} tasks but the status of "
                                           f"job {job[0]!r} attempt {job[1]} has {st['tasks_failed']} failed")

    def summary(self, ok, note):
        jobs = {}

        def job(job_id):
            return jobs.setdefault(job_id, {"results": set(), "result_messages": 0, "failures": 0,
                                            "dead_letters": 0, "parked": 0, "statuses": []})
        for (job_id, _), items in self.results.items():
            j = job(job_id)
            j["results"].update(k for k, _, _ in items if k)
            j["result_messages"] += len(items)
        for (job_id, _), items in self.failures.items():
            job(job_id)["failures"] += len(items)
        for (job_id, _), items in self.dead.items():
            job(job_id)["dead_letters"] += len(items)
        for job_id, n in self.parked.items():
            job(job_id)["parked"] += n
        states = collections.Counter()
        for (job_id, attempt), (st, _) in sorted(self.statuses.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            states[st["state"]] += 1
            job(job_id)["statuses"].append({k: st[k] for k in ("attempt", "state", "tenant", "patients", "tasks",
                                                               "tasks_failed", "resources", "counts", "failures",
                                                               "error_class")})
        for j in jobs.values():
            j["results"] = sorted(j["results"])
        return {"ok": ok, "note": note, "violations": self.count, "first_violations": self.violations,
                "topics": self.topics, "status_states": dict(states),
                "results_per_type": dict(sorted(self.results_per_type.items())),
                "failure_classes": dict(sorted(self.failure_classes.items())),
                "dead_letter_classes": dict(sorted(self.dead_classes.items())),
                "jobs": dict(sorted(jobs.items()))}


class Reader:
    """Assigns every partition of the topics from their start and reads to the watermarks."""

    def __init__(self, bootstrap, topics, timeout):
        from confluent_kafka import Consumer, TopicPartition
        self.TopicPartition = TopicPartition
        self.c = Consumer({"bootstrap.servers": bootstrap,
                           # required by the client; never joined (assign) and nothing committed
                           "group.id": f"fhirx-validate-topics-{os.getpid()}",
                           "enable.auto.commit": False, "enable.auto.offset.store": False,
                           "enable.partition.eof": True, "auto.offset.reset": "earliest",
                           "fetch.wait.max.ms": 100,
                           "socket.timeout.ms": 10000})
        self.timeout = max(1.0, min(15.0, timeout))
        try:
            md = self.c.list_topics(timeout=self.timeout)  # all topics: naming none creates none
        except Exception as e:
            self.c.close()
            raise UsageError(f"cannot read the topic list from {bootstrap}: {e}")
        missing = [t for t in topics if t not in md.topics]
        if missing:
            self.c.close()
            raise UsageError(f"topic(s) {', '.join(missing)} do not exist on {bootstrap}")
        self.partitions = {t: sorted(md.topics[t].partitions) for t in topics}
        self.position = {}
        self.target = {}
        assignment = []
        for t, parts in self.partitions.items():
            for p in parts:
                low, high = self.c.get_watermark_offsets(TopicPartition(t, p), timeout=self.timeout)
                self.position[(t, p)] = low
                self.target[(t, p)] = high
                assignment.append(TopicPartition(t, p, low))
        self.c.assign(assignment)

    def refresh(self, topics):
        """Moves the targets of topics to their current high watermarks."""
        for t in topics:
            for p in self.partitions[t]:
                _, high = self.c.get_watermark_offsets(self.TopicPartition(t, p), timeout=self.timeout)
                self.target[(t, p)] = max(self.target[(t, p)], high)

    def caught_up(self, topics=None):
        return all(self.position[tp] >= self.target[tp] for tp in self.position
                   if topics is None or tp[0] in topics)

    def behind(self):
        return [f"{t}[{p}] at {self.position[(t, p)]} of {self.target[(t, p)]}"
                for (t, p) in sorted(self.position) if self.position[(t, p)] < self.target[(t, p)]]

    def poll(self, timeout):
        from confluent_kafka import KafkaError, KafkaException
        out = []
        for m in self.c.consume(num_messages=500, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    tp = (m.topic(), m.partition())
                    self.position[tp] = max(self.position[tp], m.offset())
                    continue
                if err.fatal():
                    raise KafkaException(err)
                print(f"validate_topics: warning: {err}", file=sys.stderr)
                continue
            tp = (m.topic(), m.partition())
            self.position[tp] = max(self.position[tp], m.offset() + 1)
            out.append(m)
        return out

    def close(self):
        self.c.close()


class UsageError(Exception):
    pass


def run(args):
    schemas = fhirx_schemas.Schemas(args.schemas)
    checker = MessageChecker(schemas)
    names = [n.strip() for n in args.topics.split(",") if n.strip()]
    bad = [n for n in names if n not in TOPIC_NAMES]
    if bad or not names:
        raise UsageError(f"--topics: unknown {bad} (choose from {','.join(TOPIC_NAMES)})")
    if args.expect_status is not None and "status" not in names:
        raise UsageError("--expect-status needs the status topic in --topics")
    kind_of = {args.prefix + n: n for n in names}
    status_topic = args.prefix + "status"
    report = Report(args.max_violations)
    for t in kind_of:
        report.topics[t] = {"messages": 0, "violations": 0, "partitions": 0}

    deadline = time.monotonic() + args.timeout
    reader = Reader(args.bootstrap, list(kind_of), args.timeout)
    note = None
    try:
        for t in kind_of:
            report.topics[t]["partitions"] = len(reader.partitions[t])
        statuses_seen = 0
        waiting = args.expect_status is not None
        last_refresh = 0.0
        while True:
            for m in reader.poll(0.2):
                topic = m.topic()
                kind = kind_of[topic]
                where = f"{topic} partition {m.partition()} offset {m.offset()} key {_show(m.key())}"
                problems, info = checker.check(kind, m.key(), m.value(), m.headers())
                report.add(topic, kind, where, problems, info)
                if kind == "status":
                    statuses_seen += 1
            now = time.monotonic()
            if waiting and statuses_seen >= args.expect_status:
                waiting = False
                reader.refresh(list(kind_of))  # the outputs acknowledged before those statuses
            if not waiting and reader.caught_up():
                break
            if waiting and reader.caught_up([status_topic]) and now - last_refresh >= 0.3:
                reader.refresh([status_topic])
                last_refresh = now
            if now >= deadline:
                if waiting:
                    note = (f"timed out after {args.timeout:g} s: {status_topic} has {statuses_seen} of the "
                            f"{args.expect_status} expected status messages")
                else:
                    note = (f"timed out after {args.timeout:g} s before reading every partition to its end: "
                            + ", ".join(reader.behind()[:10]))
                break
    finally:
        reader.close()

    if note is None and args.check_jobs:
        report.check_jobs()
    for t, c in report.topics.items():
        state = "ok" if not c["violations"] else f"{c['violations']} violation(s)"
        print(f"{t}: {c['messages']} messages in {c['partitions']} partitions, {state}")
    ok = note is None and report.count == 0
    if note:
        print(f"validate_topics: FAIL: {note}", file=sys.stderr)
    elif report.count:
        shown = min(report.count, args.max_violations)
        print(f"validate_topics: FAIL: {report.count} violation(s) (first {shown} above); "
              f"first: {report.violations[0]}", file=sys.stderr)
    else:
        total = sum(c["messages"] for c in report.topics.values())
        extra = ", cross-topic job checks passed" if args.check_jobs else ""
        print(f"validate_topics: OK: {total} messages valid{extra}")
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(report.summary(ok, note), f, indent=1, sort_keys=False)
            f.write("\n")
    return 0 if ok else 1


def _show(key):
    if key is None:
        return "(none)"
    text = key.decode("utf-8", "replace")
    return repr(text if len(text) <= 120 else text[:117] + "...")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="validate_topics.py",
        description="Validate every message of the fhirx output topics against schemas/.")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port...]")
    p.add_argument("--schemas", default=fhirx_schemas.default_dir(),
                   help="directory of the *.schema.json files (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to read (and wait for --expect-status) before failing (default 60)")
    p.add_argument("--expect-status", type=int, metavar="N",
                   help="wait until N messages are in the status topic, then read every topic to its end")
    p.add_argument("--topics", default=DEFAULT_TOPICS,
                   help=f"comma-separated names from {','.join(TOPIC_NAMES)} (default {DEFAULT_TOPICS})")
    p.add_argument("--prefix", default="fhirx.", help="topic name prefix (default fhirx.)")
    p.add_argument("--check-jobs", action="store_true",
                   help="also check invariants across topics (every job in the topics has finished)")
    p.add_argument("--summary-json", metavar="PATH", help="write counts and per-job results here")
    p.add_argument("--max-violations", type=int, default=50, help="violations printed (all are counted)")
    args = p.parse_args(argv)
    if args.expect_status is not None and args.expect_status < 0:
        p.error("--expect-status must be >= 0")
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"validate_topics: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # connection failures from the client
        if type(e).__name__ == "KafkaException":
            print(f"validate_topics: Kafka error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
