#!/usr/bin/python3
"""Cerner's documented rules end to end: the simulator enforces them as Oracle's R4
documentation states them (docs/simulator.md cites each), and a real extract must pass.

  test_cerner_rules.py SCENARIO   (searches | ids | binary | bulk_care_team)

searches:  a patient job of RelatedPerson (related-person.md: patient needs
           -relationship-level=Patient) and CareTeam completes with exactly the
           simulator's resources; an incremental job whose since is a date
           ("2024-07-01") sends it as its midnight UTC, which MedicationRequest and
           ServiceRequest require (a time, ge/le) and Immunization accepts (one gt/ge):
           it completes with exactly what changed since then, full_types names the
           type without _lastUpdated, and the status keeps since as the job said it.
ids:       a search page with ids that break the id rule (resources.h) and two
           256-character ids that differ only in their last character: the good ones
           are published under distinct, whole keys; each bad one is an
           invalid_response failure naming the type and the reason, never the id; the
           job is partial and not dead-lettered (a replay cannot fix the server's data).
binary:    DiagnosticReports with 2-3 presentedForm entries (XR- PDF, R- XML, TR-
           HTML) and DocumentReferences, on a tenant whose attachment URLs only work
           exactly as given (binary_signed_urls): every form is fetched once, at its
           exact URL, and published; a tenant whose profile lists
           types.Binary.content_types ["application/pdf"] gets only the PDFs.
bulk_care_team: a Group export and a patient job of the same patients publish the
           same CareTeam resources, whose Cerner ids contain '_'; an export of
           DiagnosticReport that follows references reads every presentedForm at its exact
           (signed) URL, once."""
import collections
import json
import os
import sys
import time
import urllib.request

from e2e import SANDBOX, Check, Env, log

HERE = os.path.dirname(os.path.abspath(__file__))
# What the built-in profile follows (worker/profiles/cerner.json references.follow).
REF_TYPES = ["Practitioner", "Organization", "Location", "Binary", "RelatedPerson"]
ROOT = os.path.join(HERE, "../..")


def expected(env, tenant, patients, types, since=None, ref_types=None):
    """What a correct extraction publishes: (resources, references) as Type/id sets."""
    res, refs = set(), set()
    for p in patients:
        q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, p, ",".join(types))
        if since:
            q += "&since=" + since
        if ref_types:
            q += "&ref_types=" + ",".join(ref_types)
        e = env.sim_get(q)
        res.update(e["resources"])
        refs.update(e["references"])
    return res, refs


def results_of(env, job_id):
    return [m for m in env.read("fhirx.results") if m.headers.get("fhirx-job-id") == job_id]


def keys_of(msgs):
    return [m.key.split("/", 1)[1] for m in msgs]


def statuses(env, n):
    return {m.key: m.json() for m in env.wait_status(n)}


def sim_post(env, path, body):
    req = urllib.request.Request(env.sim_url + path, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.status


def same(check, what, got, want):
    check(got == want, "%s (%d; missing %s, extra %s)" % (
        what, len(got), sorted(want - got)[:4], sorted(got - want)[:4]))


# ---- searches ----------------------------------------------------------------------------

def scenario_searches(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 6,
                        "per_patient": {"RelatedPerson": 3, "CareTeam": 2}}])
    try:
        w = env.start_worker()
        pats = ["20000001", "20000002", "12724066"]
        full_types = ["Patient", "RelatedPerson", "CareTeam"]
        inc_types = ["MedicationRequest", "ServiceRequest", "Immunization", "Observation",
                     "Condition", "Goal"]
        env.enqueue([
            {"job_id": "rules-full", "tenant": SANDBOX, "patients": pats, "resources": full_types},
            {"job_id": "rules-since", "tenant": SANDBOX, "patients": pats, "resources": inc_types,
             "since": "2024-07-01"},
        ])
        st = statuses(env, 2)
        full, inc = st["rules-full"], st["rules-since"]
        check(full["state"] == "completed" and full["failures"] == 0,
              "RelatedPerson and CareTeam by patient complete (%s, %d failures)" % (
                  full["state"], full["failures"]))
        want, _ = expected(env, SANDBOX, pats, full_types)
        got = keys_of(results_of(env, "rules-full"))
        same(check, "the job published exactly the simulator's RelatedPersons, CareTeams and Patients",
             set(got), want)
        check(len(got) == len(set(got)), "each resource once")
        rp = [k for k in got if k.startswith("RelatedPerson/")]
        ct = [k for k in got if k.startswith("CareTeam/")]
        check(len(rp) == 9 and all(k.split("/")[1].split("-")[1] in pats for k in rp),
              "RelatedPerson ids are Cerner's <person>-<patient> (%s)" % rp[:2])
        check(len(ct) == 6 and all("_" in k for k in ct),
              "CareTeam ids are Cerner's, with '_' (%s)" % ct[:2])

        check(inc["state"] == "completed" and inc["failures"] == 0,
              "a date-only since works for MedicationRequest, ServiceRequest, Immunization "
              "(%s, %d failures)" % (inc["state"], inc["failures"]))
        check(inc["since"] == "2024-07-01", "the status keeps since as the job said it")
        check(inc["full_types"] == ["Goal"],
              "only Goal (no documented _lastUpdated) is fetched in full: %s" % inc["full_types"])
        narrowed = [t for t in inc_types if t != "Goal"]
        want_n, _ = expected(env, SANDBOX, pats, narrowed, since="2024-07-01T00:00:00Z")
        want_g, _ = expected(env, SANDBOX, pats, ["Goal"])
        got = set(keys_of(results_of(env, "rules-since")))
        same(check, "it published what changed since 2024-07-01T00:00:00Z, and every Goal",
             got, want_n | want_g)
        everything, _ = expected(env, SANDBOX, pats, narrowed)
        check(len(want_n) < len(everything),
              "since narrowed the search (%d of %d)" % (len(want_n), len(everything)))
        rc, out = env.validate(2)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- ids ---------------------------------------------------------------------------------

def scenario_ids(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 2}])
    try:
        w = env.start_worker()
        long_a = "L" * 255 + "a"
        long_b = "L" * 255 + "b"
        good = ["CARE_TEAM-119078440-34768489-17490349-4048128-0-22554767", long_a, long_b]
        bad = ["SMITH/JOHN", "JOHN DOE", "L" * 257, ".."]
        entries = [{"fullUrl": "x", "resource": {"resourceType": "Observation", "id": i,
                                                  "status": "final"}, "search": {"mode": "match"}}
                   for i in good + bad]
        entries.append({"resource": {"resourceType": "Observation", "status": "final"},
                        "search": {"mode": "match"}})
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        sim_post(env, "/_sim/tenants/%s/faults" % SANDBOX,
                 {"target": "fhir", "path": "Observation", "status": 200,
                  "body": json.dumps(bundle), "content_type": "application/fhir+json"})
        env.enqueue([{"job_id": "ids-1", "tenant": SANDBOX, "patients": ["20000001"],
                      "resources": ["Observation"]}])
        st = statuses(env, 1)["ids-1"]
        got = results_of(env, "ids-1")
        keys = [m.key for m in got]
        check(sorted(keys) == sorted("%s/Observation/%s" % (SANDBOX, i) for i in good),
              "the ids that obey the rule are published under whole, distinct keys "
              "(two 256-character ids differing in their last character: %d keys)" % len(set(keys)))
        fails = [m.json() for m in env.read("fhirx.failures", 1) if m.json()["job_id"] == "ids-1"]
        check(len(fails) == len(bad) + 1 and all(f["error_class"] == "invalid_response" and
                                                 f["resource_type"] == "Observation" and
                                                 not f["transient"] for f in fails),
              "each unpublishable resource is one invalid_response failure naming its type (%d)"
              % len(fails))
        msgs = " | ".join(f["message"] for f in fails)
        check(all(b not in msgs for b in bad[:3]) and "JOHN" not in msgs,
              "no failure quotes the id: " + msgs[:300])
        for needle in ("contains '/'", "contains byte 0x20", "is 257 bytes long", "only dots",
                       "has no id"):
            check(needle in msgs, "a failure says why: " + needle)
        check(st["state"] == "partial" and st["tasks_failed"] == 0 and
              st["counts"].get("Observation") == len(good),
              "the job is partial, counts %s, no failed task" % st["counts"])
        check(not [m for m in env.read("fhirx.dlq") if m.key == "ids-1"],
              "not dead-lettered: a replay cannot fix the server's ids")
        rc, out = env.validate(1)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- binary ------------------------------------------------------------------------------

def scenario_binary(check):
    tenants = [{"id": SANDBOX, "sandbox": True, "patients": 4,
                "per_patient": {"DiagnosticReport": 6, "DocumentReference": 2}},
               {"id": "pdf-only", "patients": 4,
                "per_patient": {"DiagnosticReport": 6, "DocumentReference": 2}}]
    env = Env(tenants=tenants, sim_extra={"binary_signed_urls": True})
    try:
        w = env.start_worker()
        pats = ["20000001", "20000002"]
        types = ["DiagnosticReport", "DocumentReference"]
        env.enqueue([{"job_id": "bin-all", "tenant": SANDBOX, "patients": pats,
                      "resources": types, "follow_references": True}])
        a = statuses(env, 1)["bin-all"]
        check(a["state"] == "completed" and a["failures"] == 0,
              "every attachment was fetched at its exact (signed) URL: %s, %d failures" % (
                  a["state"], a["failures"]))
        res, refs = expected(env, SANDBOX, pats, types, ref_types=REF_TYPES)
        got = results_of(env, "bin-all")
        keys = keys_of(got)
        same(check, "the job published its reports, documents and every form of them",
             set(keys), res | refs)
        check(len(keys) == len(set(keys)), "each Binary once per job")
        forms = collections.Counter(k.split("/")[1].split("-")[0] for k in keys
                                    if k.startswith("Binary/"))
        check(forms["XR"] > 0 and forms["R"] == 12 and forms["TR"] > 0,
              "PDF, XML and HTML forms all arrived: %s" % dict(forms))
        # Each presentedForm the reports list is one Binary result, from that exact URL.
        want_urls, per_report = set(), []
        for m in got:
            v = m.json()
            if v["resourceType"] == "DiagnosticReport":
                per_report.append(len(v["presentedForm"]))
                want_urls.update(f["url"].split("?")[0] + "?sig=" for f in v["presentedForm"])
        check(len(per_report) == 12 and set(per_report) == {2, 3},
              "the reports have 2 or 3 forms each: %s" % per_report)
        bins = {m.headers["fhirx-source-url"]: m.json() for m in got
                if m.json()["resourceType"] == "Binary"}
        check(want_urls <= set(bins),
              "each form's Binary came from its attachment URL (query values redacted)")
        check(all(b.get("data") and b.get("contentType") for b in bins.values()),
              "each Binary is the FHIR resource with base64 data")
        reads = env.sim_get("/_sim/tenants/%s/reads?type=Binary" % SANDBOX)
        check(reads and max(reads.values()) == 1,
              "each Binary was read once (%d Binaries)" % len(reads))
        check(env.stop(w) == 0, "worker exits 0")

        # The second tenant's profile: the built-in one, fetching only PDF attachments.
        with open(os.path.join(ROOT, "worker/profiles/cerner.json")) as f:
            prof = json.load(f)
        prof["name"] = "cerner-pdf"
        prof["types"]["Binary"]["content_types"] = ["application/pdf"]
        prof_path = os.path.join(env.dir, "cerner-pdf.json")
        with open(prof_path, "w") as f:
            json.dump(prof, f)
        with open(env.config) as f:
            cfg = json.load(f)
        cfg["tenants"][1]["profile"] = prof_path
        with open(env.config, "w") as f:
            json.dump(cfg, f)
        w = env.start_worker("worker2")
        env.enqueue([{"job_id": "bin-pdf", "tenant": "pdf-only", "patients": pats,
                      "resources": types, "follow_references": True}])
        p = statuses(env, 2)["bin-pdf"]
        check(p["state"] == "completed", "the PDF-only tenant completed: %s" % p["state"])
        pk = keys_of(results_of(env, "bin-pdf"))
        pdf_forms = collections.Counter(k.split("/")[1].split("-")[0] for k in pk
                                        if k.startswith("Binary/"))
        res_p, refs_p = expected(env, "pdf-only", pats, types, ref_types=REF_TYPES)
        same(check, "types.Binary.content_types [application/pdf]: only the XR- PDFs",
             set(pk), res_p | {r for r in refs_p
                               if not r.startswith("Binary/") or r.startswith("Binary/XR-")})
        check(set(pdf_forms) == {"XR"}, "no XML or HTML form was fetched: %s" % dict(pdf_forms))
        rc, out = env.validate(2)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- bulk CareTeam -----------------------------------------------------------------------

def scenario_bulk_care_team(check):
    group = "care-group"
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 8,
                        "per_patient": {"CareTeam": 3, "DiagnosticReport": 2},
                        "binary_signed_urls": True,
                        "groups": [{"id": group, "first": 1, "count": 6}],
                        "export": {"duration_ms": 500, "retry_after_s": 1,
                                   "file_max_resources": 7}}],
              worker_extra={"bulk": {"poll_min_ms": 200, "poll_max_ms": 2000}})
    try:
        w = env.start_worker()
        types = ["Patient", "CareTeam"]
        pats = ["%d" % (20000001 + i) for i in range(6)]
        env.enqueue([{"kind": "bulk", "job_id": "ct-bulk", "tenant": SANDBOX, "group": group,
                      "resources": types},
                     {"job_id": "ct-patients", "tenant": SANDBOX, "patients": pats,
                      "resources": types}])
        st = statuses(env, 2)
        b, p = st["ct-bulk"], st["ct-patients"]
        check(b["state"] == "completed" and b["failures"] == 0,
              "the export completed without failures (%s, %d)" % (b["state"], b["failures"]))
        check(p["state"] == "completed", "the patient job completed (%s)" % p["state"])
        want = set(env.sim_get("/_sim/tenants/%s/groups/%s/expected?types=%s" % (
            SANDBOX, group, ",".join(types)))["resources"])
        bulk_keys = set(keys_of(results_of(env, "ct-bulk")))
        pat_keys = set(keys_of(results_of(env, "ct-patients")))
        teams = {k for k in want if k.startswith("CareTeam/")}
        check(len(teams) == 18 and all("_" in k for k in teams),
              "the Group has 18 CareTeams, every id with '_'")
        same(check, "the export published every CareTeam and Patient of the Group", bulk_keys, want)
        same(check, "the patient job published the same set", pat_keys, want)
        check(b["counts"].get("CareTeam") == 18, "the export's status counts 18 CareTeams")

        # Bulk follows attachment URLs exactly as given too (binary_signed_urls).
        env.enqueue([{"kind": "bulk", "job_id": "dr-bulk", "tenant": SANDBOX, "group": group,
                      "resources": ["DiagnosticReport"], "follow_references": True}])
        d = statuses(env, 3)["dr-bulk"]
        got = results_of(env, "dr-bulk")
        reports = [m.json() for m in got if m.headers.get("fhirx-via") == "bulk"]
        forms = {"Binary/" + f["url"].split("/Binary/")[1].split("?")[0]
                 for r in reports for f in r["presentedForm"]}
        binaries = {k for k in keys_of(got) if k.startswith("Binary/")}
        check(d["state"] == "completed" and d["failures"] == 0 and len(reports) == 12,
              "the export of 12 reports with references completed (%s, %d failures)" % (
                  d["state"], d["failures"]))
        same(check, "every presentedForm of the exported reports was read and published",
             binaries, forms)
        reads = env.sim_get("/_sim/tenants/%s/reads?type=Binary" % SANDBOX)
        check(len(reads) == len(forms) and max(reads.values()) == 1,
              "each Binary read once (%d)" % len(reads))
        rc, out = env.validate(3)
        check(rc == 0, "outputs validate against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"searches": scenario_searches, "ids": scenario_ids, "binary": scenario_binary,
             "bulk_care_team": scenario_bulk_care_team}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))
