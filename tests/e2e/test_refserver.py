#!/usr/bin/python3
"""fhirx against a server that behaves like the SMART reference Bulk Data server
(docs/simulator.md "Reference server mode"; issue 18).

  test_refserver.py export

export: fhirx registers with a client id the server issued (a JWT of ~500+ characters,
        far past the old 256-byte limit) and runs two Group exports end to end:
  A  plain: the status URL ({origin}/fhir/bulkstatus/..) and every file
     ({origin}/{settings}/fhir/bulkfiles/..) are outside fhir_base's path, yet on its
     origin and of the tenant's own export, so they get the token; the export
     completes with exactly the Group's resources, Claim, ExplanationOfBenefit and
     ImagingStudy included, and its status counts what was published, by type; the DELETE
     reached the status URL; every path that saw an Authorization header is the base, the
     status URL or a file of the manifest. While it runs, the status route's rate limit is
     tripped, so fhirx's next poll is answered 429 with Retry-After in epoch seconds (as the
     real server sends it): fhirx waits until that instant, not its cap, and never comes
     back early (the simulator's Retry-After ledger).
  B  follow_references on a server without a read API: every reference read is a 404, so
     the job is partial with error_class not_found (the class of its failures), and each
     failure names its reference.
  C  the same with one file's references rewritten to a canary host: the canary sees
     nothing (those are foreign_reference failures with the canary's URL), and the status's
     error_class is the class of the job's first failure record.
Every message validates against schemas/."""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from e2e import BUILD, Check, Env, log

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../support"))
from fx_canary import Canary  # noqa: E402

TENANT = "bulk-data-reference"
GROUP = "BMCHealthNet"
MEMBERS = 6
EXTRA = {"Claim": 2, "ExplanationOfBenefit": 2, "ImagingStudy": 1}


def make_env():
    tenant = {"id": TENANT, "patients": 12,
              "groups": [{"id": GROUP, "first": 1, "count": MEMBERS}],
              # Long enough to trip the rate limit while it runs; files of 40 lines.
              "export": {"duration_ms": 4000, "retry_after_s": 1, "file_max_resources": 40},
              # Two status polls per 1.5 s are fine (fhirx polls once a second); a third
              # blocks the route for 2 s.
              "reference_server": {"extra_types": EXTRA,
                                   "rate_limit": {"requests": 2, "window_ms": 1500,
                                                  "block_ms": 2000}}}
    # poll_max_ms stays at its default (10 minutes): an epoch Retry-After read as
    # seconds would hold the export there, far past this test's timeouts.
    env = Env(tenants=[tenant], worker_extra={"bulk": {"poll_min_ms": 200}})
    # A standard FHIR server: the generic profile. Its bulk jobs that name no
    # types export whatever the server has (no _type), Claim and the rest included.
    with open(env.config) as f:
        cfg = json.load(f)
    cfg["tenants"][0]["profile"] = "generic"
    # Every type the server has, as a user of the reference server asks for
    # (system/*.read there): without it the token covers the generic profile's
    # US Core default types only, and the server exports only what it allows.
    cfg["tenants"][0]["scopes"] = env.scopes
    with open(env.config, "w") as f:
        json.dump(cfg, f, indent=1)
    return env


def register(env):
    """The server issues the client id: POST auth/register with the JWKS."""
    with open(os.path.join(env.dir, "jwks.json")) as f:
        jwks = f.read()
    req = urllib.request.Request(
        "%s/tenants/%s/auth/register" % (env.sim_url, TENANT), method="POST",
        data=urllib.parse.urlencode({"jwks": jwks}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req) as r:
        return r.read().decode().strip()


def use_client_id(env, client_id):
    with open(env.config) as f:
        cfg = json.load(f)
    cfg["tenants"][0]["client_id"] = client_id
    with open(env.config, "w") as f:
        json.dump(cfg, f, indent=1)


def bulk_job(job_id, **kw):
    j = {"kind": "bulk", "job_id": job_id, "tenant": TENANT, "group": GROUP}
    j.update(kw)
    return j


def status_of(env, job_id, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        st = [m.json() for m in env.read("fhirx.status") if m.key == job_id]
        if st:
            return st[-1]
        time.sleep(0.3)
    raise AssertionError("no status for %s after %ds" % (job_id, timeout))


def results_of(env, job_id):
    return [m for m in env.read("fhirx.results") if m.headers.get("fhirx-job-id") == job_id]


def failures_of(env, job_id):
    """The job's failure records in the order they were produced (one key, one partition)."""
    return [m.json() for m in env.read("fhirx.failures") if m.key == "%s/%s" % (TENANT, job_id)]


def by_type(keys):
    out = {}
    for k in keys:
        t = k.split("/", 1)[0]
        out[t] = out.get(t, 0) + 1
    return out


def path_of(url):
    return urllib.parse.urlsplit(url).path


def running_export(env, timeout=60):
    """The id of the tenant's export while it still runs."""
    end = time.time() + timeout
    while time.time() < end:
        for x in env.sim_get("/_sim/tenants/%s/export" % TENANT)["exports"]:
            if x["state"] == "running":
                return x["id"]
        time.sleep(0.05)
    raise AssertionError("no running export within %ds" % timeout)


def trip_status_limit(env, job):
    """Two quick requests of our own (no token, a query of their own so the simulator's
    Retry-After ledger keeps them apart from fhirx's polls): with fhirx's last poll they
    exceed the route's limit, which blocks it for 2 s. Returns the statuses we got."""
    got = []
    for _ in range(3):
        try:
            with urllib.request.urlopen("%s/fhir/bulkstatus/%s?probe=1" % (env.sim_url, job)) as r:
                got.append(r.status)
        except urllib.error.HTTPError as e:
            got.append(e.code)
        if got[-1] == 429:
            break
    return got


def scenario_export(check):
    with Canary(BUILD) as canary:
        env = make_env()
        try:
            client_id = register(env)
            check(len(client_id) > 256 and client_id.count(".") == 2,
                  "the server issued a JWT client id of %d characters" % len(client_id))
            use_client_id(env, client_id)
            w = env.start_worker()
            want = set(env.sim_get("/_sim/tenants/%s/groups/%s/expected" % (TENANT, GROUP))
                       ["resources"])
            want_types = by_type(want)
            check(all(want_types.get(t) == n * MEMBERS for t, n in EXTRA.items()),
                  "the Group's export holds types outside Cerner's set: %s"
                  % {t: want_types.get(t) for t in EXTRA})

            # ---- A: plain export ----
            env.enqueue([bulk_job("ref-a")])
            job = running_export(env)
            probes = trip_status_limit(env, job)
            check(429 in probes, "the status route's rate limit is tripped (%s)" % probes)
            a = status_of(env, "ref-a")
            check(a["state"] == "completed" and a["failures"] == 0,
                  "the export completed (%s, error_class %s)" % (a["state"], a["error_class"]))
            got = results_of(env, "ref-a")
            keys = {m.key.split("/", 1)[1] for m in got}
            check(keys == want, "exactly the Group's resources (%d; missing %s, extra %s)"
                  % (len(keys), sorted(want - keys)[:5], sorted(keys - want)[:5]))
            published = by_type(m.key.split("/", 1)[1] for m in got)
            check(a["counts"] == published and a["resources"] == len(got) == len(want),
                  "the status counts what was published, by type, unknown types included "
                  "(%d resources: %s)" % (a["resources"], a["counts"]))
            check(a["bulk"]["patient_resources"] == a["patients"] == published["Patient"] == MEMBERS,
                  "bulk.patient_resources = patients = Patient resources exported (%d)"
                  % a["bulk"]["patient_resources"])

            counters = env.sim_get("/_sim/counters")["tenants"][TENANT]
            ex, ref = counters["export"], counters["reference_server"]
            check(ex["deletes"] == 1 and not any(
                x["id"] == job for x in env.sim_get("/_sim/tenants/%s/export" % TENANT)["exports"]),
                  "the DELETE reached the status URL outside the base (%d)" % ex["deletes"])
            check(ref["rate_limited_epoch_s"] >= 1,
                  "fhirx's poll during the block was answered 429 with Retry-After in epoch "
                  "seconds (%d times)" % ref["rate_limited_epoch_s"])
            ledger = env.sim_get("/_sim/tenants/%s/retry_after_violations" % TENANT)
            check(ledger["violations"] == 0 and ledger["checked"] >= 1,
                  "after the epoch Retry-After fhirx came back no earlier than announced "
                  "(%d checked, %d early: %s)" % (ledger["checked"], ledger["violations"],
                                                 ledger["details"][:2]))

            # Where the token went: the base, this export's status URL and manifest files.
            progress = [m.json() for m in env.read("fhirx.bulk") if m.key == "ref-a"]
            status_url = next(p["status_url"] for p in progress if p.get("status_url"))
            check(not status_url.startswith(env.sim_url + "/r4/") and
                  path_of(status_url) == "/fhir/bulkstatus/" + job,
                  "the status URL is outside fhir_base's path: %s" % path_of(status_url))
            files = {path_of(m.headers["fhirx-source-url"]) for m in got}
            check(files and all("/fhir/bulkfiles/" in p and not p.startswith("/r4/")
                                for p in files),
                  "the files came from outside fhir_base's path (%d files)" % len(files))
            auth = env.sim_get("/_sim/tenants/%s/authorization" % TENANT)["paths"]
            with_token = {p for p, n in auth.items() if n["authorization"]}
            allowed = {p for p in with_token if p.startswith("/r4/%s/" % TENANT)}
            allowed |= {path_of(status_url)} | files
            check(with_token and with_token <= allowed,
                  "the token went only to the base, the status URL and the manifest's files "
                  "(elsewhere: %s)" % sorted(with_token - allowed)[:5])
            check(path_of(status_url) in with_token and files <= with_token,
                  "the status URL and every file did get it (%d paths)" % len(with_token))

            # ---- B: follow_references without a read API ----
            env.enqueue([bulk_job("ref-b", follow_references=True)])
            b = status_of(env, "ref-b")
            fails = failures_of(env, "ref-b")
            keys_b = {m.key.split("/", 1)[1] for m in results_of(env, "ref-b")}
            check(b["state"] == "partial" and keys_b == want,
                  "follow_references: all of the Group's resources, partial (%s)" % b["state"])
            check(fails and b["failures"] == len(fails) and
                  all(f["error_class"] == "not_found" for f in fails),
                  "every reference read failed as not_found: the server has no read API (%d)"
                  % len(fails))
            check(b["error_class"] == "not_found",
                  "so the status's error_class is not_found, its failures' class (%s)"
                  % b["error_class"])
            check(all(f["reference"] and f["resource_type"] == f["reference"].split("/")[0] and
                      f["http_status"] == 404 and f["url"] and f["patient"] is None
                      for f in fails),
                  "each failure names its reference, its type, the 404 and the URL read (e.g. %s)"
                  % {k: fails[0][k] for k in ("reference", "resource_type", "http_status")})
            check(len({f["reference"] for f in fails}) == len(fails),
                  "one failure per referenced entity")
            check(b["bulk"]["patient_resources"] == MEMBERS and b["counts"] == a["counts"],
                  "B's counts are A's: references that failed publish nothing")

            # ---- C: one file's references point at a canary host ----
            env.sim_post("/_sim/tenants/%s/faults" % TENANT,
                         {"target": "fhir", "path": "*/fhir/bulkfiles/*",
                          "foreign_references": canary.url, "count": 1})
            env.enqueue([bulk_job("ref-c", follow_references=True)])
            c = status_of(env, "ref-c")
            fails = failures_of(env, "ref-c")
            foreign = [f for f in fails if f["error_class"] == "foreign_reference"]
            check(c["state"] == "partial" and foreign and
                  all(f["url"].startswith(canary.url) for f in foreign),
                  "references moved to the canary host are foreign_reference failures with its "
                  "URL (%d of %d)" % (len(foreign), len(fails)))
            check(c["error_class"] == fails[0]["error_class"],
                  "the status's error_class is its first failure's (%s)" % c["error_class"])
            seen = canary.requests()
            check(seen["requests"] == 0 and seen["with_authorization"] == 0,
                  "the canary host saw no request and no token (%s)" % seen["paths"][:3])

            rc, out = env.validate(3)
            check(rc == 0, "every output message validates against schemas/: " + out[-400:])
            log("worker exit", env.stop(w))
        finally:
            env.close()


SCENARIOS = {"export": scenario_export}

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "export"
    SCENARIOS[name](Check(name))
    log("PASS " + name)
