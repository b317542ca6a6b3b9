#!/usr/bin/python3
"""Cerner's documented Group $export rules (content/millennium/bulk-data/group-export.md)
end to end, against a simulator that enforces them, and the generic profile.

  test_bulk_rules.py SCENARIO    (per_patient | filters | generic)

per_patient: a bulk job without resources asks for the tenant's types. Cerner exports 14 of
             them; the simulator refuses Coverage, RelatedPerson and ServiceRequest in _type
             (400), and never saw one from fhirx. Those three are fetched per patient, for
             the exported Patients, by follow-up patient jobs on fhirx.jobs (three of them:
             12 patients, worker.max_patients_per_job 5) that the bulk status record names;
             one of them has a search refused (403) and is dead-lettered and replayed like
             any patient job. Between the export and its follow-up jobs, exactly the Group's
             data is published. The status polls, downloads and DELETE came from the client that
             started the export (the simulator answers another client's 403, and counted
             none), and the kick-off carried only parameters Cerner supports.
filters:     a _typeFilter Cerner accepts is applied by the server: only laboratory
             Observations are published, exactly the simulator's own answer for the
             filter. Filters Cerner refuses (on Patient, with patient=, two for one type)
             never reach the server: such a job is dead-lettered as invalid_job with the
             rule in its reason.
generic:     a tenant with the generic profile asks for the scopes of what it extracts and
             nothing else (no Binary, Location, RelatedPerson), may name R4 types outside
             Cerner's 21 (Claim, ImagingStudy) that a Cerner tenant refuses, and extracts
             with plain patient= searches."""
import json
import os
import re
import subprocess
import sys
import time

from e2e import FHIRX, SANDBOX, Check, Env, log
from test_bulk import results_of, validate

GROUP = "cohort-r"
NOT_EXPORTED = ["Coverage", "RelatedPerson", "ServiceRequest"]


def rules_env(worker=None, file_max=1000, **kw):
    return Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30,
                         "groups": [{"id": GROUP, "first": 1, "count": 12}],
                         "export": {"duration_ms": 800, "retry_after_s": 1,
                                    "file_max_resources": file_max}}],
               worker_extra=dict({"bulk": {"poll_min_ms": 200, "poll_max_ms": 2000}},
                                 **(worker or {})), **kw)


def export_counters(env):
    return env.sim_get("/_sim/counters")["tenants"][SANDBOX]["export"]


def group_expected(env, types, type_filter=None):
    q = "/_sim/tenants/%s/groups/%s/expected?types=%s" % (SANDBOX, GROUP, ",".join(types))
    if type_filter:
        q += "&type_filter=" + type_filter
    return set(env.sim_get(q)["resources"])


def status_of(env, job_id):
    return [m.json() for m in env.read("fhirx.status") if m.key == job_id]


# ---- per_patient -------------------------------------------------------------------------

def scenario_per_patient(check):
    env = rules_env(worker={"worker": {"max_patients_per_job": 5}})
    try:
        # One Coverage search is refused (403): that follow-up job fails in part, like any
        # patient job, and a replay of its dead letter completes it.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "Coverage", "status": 403, "count": 1,
                      "body": '{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
                              '"code":"forbidden","diagnostics":"insufficient scope"}]}',
                      "content_type": "application/fhir+json"})
        w = env.start_worker()
        env.enqueue([{"kind": "bulk", "job_id": "cohort-pp", "tenant": SANDBOX, "group": GROUP}])
        # The bulk job and its three follow-up patient jobs.
        statuses = {m.key: m.json() for m in env.wait_status(4, timeout=240)}
        bulk = statuses.get("cohort-pp")
        check(bulk and bulk["state"] == "completed", "the export completed: %s" % (bulk and bulk["state"]))
        pp = bulk["bulk"].get("per_patient") if bulk else None
        check(pp and pp["types"] == NOT_EXPORTED and pp["patients"] == 12,
              "its status says Coverage, RelatedPerson, ServiceRequest are fetched per patient for "
              "the 12 exported Patients: %s" % pp)
        jobs = pp["jobs"] if pp else []
        check(len(jobs) == 3 and all(re.fullmatch(r"cohort-pp\.per-patient\.[0-9]+\.[123]", j)
                                     for j in jobs),
              "and names the 3 follow-up jobs (12 patients, 5 per job): %s" % jobs)
        partial = [j for j in jobs if statuses.get(j, {}).get("state") == "partial"]
        for j in jobs:
            st = statuses.get(j)
            check(st and st["state"] in ("completed", "partial") and st["attempt"] == 1 and
                  st["tasks"] == st["patients"] * 3,
                  "follow-up %s ran: %s" % (j, st and (st["state"], st["patients"], st["tasks"])))
        check(len(partial) == 1 and statuses[partial[0]]["error_class"] == "scope" and
              statuses[partial[0]]["tasks_failed"] == 1,
              "the follow-up whose Coverage search was refused is partial, class scope: %s" % partial)
        letters = [m for m in env.read("fhirx.dlq") if m.key in jobs]
        letter = letters[0].json() if letters else {}
        check(len(letters) == 1 and letters[0].key == partial[0] and
              len(letter.get("patients", [])) == 1 and letter.get("resources") == ["Coverage"],
              "and dead-lettered, narrowed to that patient's Coverage: %s" % letter)
        r = subprocess.run([FHIRX, "replay", "--config", env.config, "--error-class", "scope"],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0 and "1 replayed" in r.stdout + r.stderr,
              "fhirx replay sends it back: %s" % (r.stdout + r.stderr).strip()[-200:])
        replayed = None
        end = time.time() + 120
        while time.time() < end and not replayed:
            replayed = next((s for s in status_of(env, partial[0]) if s["attempt"] == 2), None)
            time.sleep(0.3)
        check(replayed and replayed["state"] == "completed",
              "attempt 2 of it completed: %s" % (replayed and replayed["state"]))
        sent = [m.json() for m in env.read("fhirx.jobs") if m.key in jobs]
        sent = [j for j in sent if j.get("attempt") == 1]  # not the replay (attempt 2)
        check(len(sent) == 3 and all(s["resources"] == NOT_EXPORTED and "since" not in s
                                     for s in sent) and
              sorted(p for s in sent for p in s["patients"]) ==
              ["%d" % (20000001 + i) for i in range(12)],
              "they are ordinary patient jobs on fhirx.jobs, keyed by id, naming every exported "
              "Patient once")

        # What the server exported plus what the follow-ups fetched: exactly the Group's data.
        exported = group_expected(env, ["Patient", "AllergyIntolerance", "CarePlan", "CareTeam",
                                        "Condition", "Device", "DiagnosticReport",
                                        "DocumentReference", "Encounter", "Goal", "Immunization",
                                        "MedicationRequest", "Observation", "Procedure"])
        got = {m.key.split("/", 1)[1] for m in results_of(env, "cohort-pp")}
        check(got == exported, "the export published exactly the 14 types Cerner exports (%d; "
              "missing %s, extra %s)" % (len(got), sorted(exported - got)[:3], sorted(got - exported)[:3]))
        patients = ",".join("%d" % (20000001 + i) for i in range(12))
        want_pp = set(env.sim_get("/_sim/tenants/%s/expected?patient=%s&types=%s" %
                                  (SANDBOX, patients, ",".join(NOT_EXPORTED)))["resources"])
        got_pp = set()
        for j in jobs:
            got_pp |= {m.key.split("/", 1)[1] for m in results_of(env, j)}
        check(len(want_pp) > 12 and got_pp == want_pp,
              "the follow-ups published exactly the Group's Coverage, RelatedPerson and "
              "ServiceRequest (%d of %d)" % (len(got_pp), len(want_pp)))

        ex = export_counters(env)
        check(ex["kickoffs"] == 1 and ex["kickoffs_invalid"] == 0,
              "one kick-off, and none the server refused (%s)" % ex)
        check(ex["other_client"] == 0 and ex["status_polls"] >= 1 and ex["deletes"] == 1,
              "polls, downloads and the DELETE came from the exporting client (%d refused)"
              % ex["other_client"])
        validate(env, check, 5)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- filters -----------------------------------------------------------------------------

def scenario_filters(check):
    env = rules_env(file_max=40)
    try:
        w = env.start_worker()
        good = {"kind": "bulk", "job_id": "labs", "tenant": SANDBOX, "group": GROUP,
                "resources": ["Patient", "Observation", "Condition"],
                "type_filter": ["Observation?category=laboratory"]}
        refused = [
            ("on-patient", ["Patient?gender=male"], "takes no _typeFilter on Patient"),
            ("by-patient", ["Observation?patient=20000001"], "parameter 'patient' is refused"),
            ("twice", ["Observation?category=laboratory", "Observation?category=vital-signs"],
             "a second filter for Observation"),
        ]
        env.enqueue([good] + [{"kind": "bulk", "job_id": jid, "tenant": SANDBOX, "group": GROUP,
                               "resources": ["Patient", "Observation"], "type_filter": tf}
                              for jid, tf, _ in refused])
        statuses = {m.key: m.json() for m in env.wait_status(4, timeout=240)}
        st = statuses.get("labs")
        check(st and st["state"] == "completed", "the filtered export completed")
        want = group_expected(env, ["Patient", "Observation", "Condition"],
                              "Observation%3Fcategory%3Dlaboratory")
        unfiltered = group_expected(env, ["Observation"])
        got = results_of(env, "labs")
        keys = {m.key.split("/", 1)[1] for m in got}
        labs = {k for k in keys if k.startswith("Observation/")}
        check(keys == want and 0 < len(labs) < len(unfiltered),
              "exactly the simulator's answer for the filter: %d of %d Observations"
              % (len(labs), len(unfiltered)))
        categories = set()
        for m in got:
            res = m.json()
            if res["resourceType"] == "Observation":
                categories |= {c["code"] for cat in res.get("category", []) for c in cat["coding"]}
        check(categories == {"laboratory"}, "every published Observation is a laboratory result: %s"
              % sorted(categories))
        dlq = {m.key: m for m in env.read("fhirx.dlq")}
        for jid, _, rule in refused:
            s = statuses.get(jid)
            letter = dlq.get(jid)
            check(s and s["state"] == "failed" and s["error_class"] == "invalid_job",
                  "%s: failed as invalid_job" % jid)
            check(letter is not None and letter.headers.get("fhirx-error-class") == "invalid_job" and
                  rule in letter.headers.get("fhirx-reason", ""),
                  "%s: dead-lettered with the rule in its reason: %s"
                  % (jid, letter and letter.headers.get("fhirx-reason")))
        ex = export_counters(env)
        check(ex["kickoffs"] == 1 and ex["kickoffs_invalid"] == 0,
              "the refused filters never reached the server (%d kick-off)" % ex["kickoffs"])
        validate(env, check, 4)
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- generic -----------------------------------------------------------------------------

def fhirx(*args, stdin=None):
    return subprocess.run([FHIRX] + list(args), input=stdin, capture_output=True, text=True,
                          timeout=120)


def scenario_generic(check):
    # The simulator's client may be granted every R4 type fhirx knows of: what the token
    # asks for is then exactly what is granted.
    scopes = ["system/%s.read" % t for t in (
        "Patient", "Observation", "Condition", "Encounter", "AllergyIntolerance", "Procedure",
        "Immunization", "MedicationRequest", "CarePlan", "CareTeam", "Goal", "Device",
        "DiagnosticReport", "DocumentReference", "Coverage", "ServiceRequest", "RelatedPerson",
        "Practitioner", "Organization", "Location", "Binary", "Claim", "ImagingStudy")]
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10,
                        "fhirx": {"profile": "generic", "follow_references": False}}],
              scopes=scopes)
    try:
        r = fhirx("scopes", "--config", env.config)
        asked = r.stdout.split()
        us_core = sorted("system/%s.read" % t for t in (
            "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device",
            "DiagnosticReport", "DocumentReference", "Encounter", "Goal", "Immunization",
            "MedicationRequest", "Observation", "Patient", "Procedure"))
        check(r.returncode == 0 and asked == us_core,
              "fhirx scopes: the generic profile's query set, no Binary, Location or "
              "RelatedPerson: %s" % asked)
        tok = fhirx("token", "--config", env.config)
        granted = sorted(json.loads(tok.stdout)["scope"].split()) if tok.returncode == 0 else None
        check(granted == us_core, "the token asked for exactly those (granted: %s)" % granted)

        # R4 types outside Cerner's 21: a generic tenant names them, a Cerner one cannot.
        r = fhirx("enqueue", "--config", env.config, "--tenant", SANDBOX, "--patients", "20000001",
                  "--resources", "Patient,Claim,ImagingStudy", "--dry-run")
        job = json.loads(r.stdout) if r.returncode == 0 else {}
        check(job.get("resources") == ["Claim", "ImagingStudy", "Patient"],
              "enqueue takes Claim and ImagingStudy for a generic tenant: %s" % (job or r.stderr))
        r = fhirx("enqueue", "--config", env.config, "--group", GROUP, "--resources",
                  "Patient,ExplanationOfBenefit", "--dry-run")
        check(r.returncode == 0, "and in a bulk job (its server exports what it has)")
        with open(env.config) as f:
            cerner = json.load(f)
        cerner["tenants"][0]["profile"] = "cerner"
        cerner_cfg = os.path.join(env.dir, "cerner.json")
        with open(cerner_cfg, "w") as f:
            json.dump(cerner, f)
        r = fhirx("enqueue", "--config", cerner_cfg, "--tenant", SANDBOX, "--patients", "20000001",
                  "--resources", "Patient,Claim", "--dry-run")
        check(r.returncode == 1 and "does not fetch Claim per patient" in r.stderr,
              "a Cerner tenant refuses Claim, naming the profile: %s" % r.stderr.strip()[-160:])

        # A patient job: plain patient= searches of what the simulator has.
        w = env.start_worker()
        types = ["Patient", "Observation", "Condition", "Encounter", "Immunization"]
        env.enqueue([{"job_id": "gen-1", "tenant": SANDBOX, "patients": ["20000001", "20000002"],
                      "resources": types}])
        st = env.wait_status(1, timeout=120)[-1].json()
        want = set(env.sim_get("/_sim/tenants/%s/expected?patient=20000001,20000002&types=%s" %
                               (SANDBOX, ",".join(types)))["resources"])
        got = {m.key.split("/", 1)[1] for m in results_of(env, "gen-1")}
        check(st["state"] == "completed" and got == want,
              "the generic tenant's job published exactly the patients' data (%d)" % len(got))
        rc, out = env.validate(1)
        check(rc == 0, "every output message validates against schemas/: " + out[-400:])
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"per_patient": scenario_per_patient, "filters": scenario_filters,
             "generic": scenario_generic}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))
