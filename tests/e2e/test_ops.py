#!/usr/bin/python3
"""Operating fhirx: the admin endpoint and live tenant changes, end to end.

  test_ops.py SCENARIO    (metrics | health | reload)

metrics: /metrics scraped during and after a run, parsed with the Prometheus
         text-format parser (python3-prometheus-client), checked against what
         the run did (status records, outputs, the simulator's counters).
health:  /healthz, /readyz flipping as the embedded Kafka goes down and up,
         and /.well-known/jwks.json equal to `fhirx keys jwks`.
reload:  a job for a tenant the worker does not have is dead-lettered
         (unknown_tenant); while a slow job runs, a broken file is refused (the
         reason logged) and the fixed one adds the tenant; the slow job completes,
         a job for the added tenant completes, and the dead letter replayed with
         `fhirx replay` completes on attempt 2."""
import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from e2e import FHIRX, SANDBOX, Check, Env, log, wait_until

TYPES = ["Patient", "Observation", "Condition", "Encounter"]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers
    except urllib.error.URLError:
        return None, "", {}  # nobody listening (any more)


def scrape(url):
    """{(name, frozenset(labels)): value} from /metrics, through the official parser."""
    status, text, headers = get(url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), status
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0)


def total(m, name, **labels):
    return sum(v for (n, l), v in m.items() if n == name and set(labels.items()) <= set(l))


def scenario_metrics(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30}])
    try:
        w = env.start_worker()
        admin = env.admin_url(w)
        jobs = [{"job_id": "m-%02d" % i, "tenant": SANDBOX, "patients": ["%d" % (20000001 + i)],
                 "resources": TYPES} for i in range(12)]
        jobs.append({"job_id": "m-missing", "tenant": SANDBOX, "patients": ["99999999"],
                     "resources": ["Patient"]})
        env.enqueue(jobs + [b"not a job"])
        during = scrape(admin)  # mid-run: parses, and counters only grow
        statuses = {m.key: m.json() for m in env.wait_status(len(jobs) + 1)}
        # A job leaves jobs_in_flight once its status record is acknowledged, just after
        # the record is readable: scrape once nothing is in flight.
        after = wait_until("nothing in flight", lambda: (lambda m: m if value(
            m, "fhirx_jobs_in_flight") == 0 and value(m, "fhirx_requests_in_flight") == 0
            else None)(scrape(admin)))
        check(all(after.get(k, 0) >= v for k, v in during.items()
                  if k[0].endswith("_total")), "counters never go down between scrapes")
        states = collections.Counter(s["state"] for s in statuses.values())
        check(value(after, "fhirx_jobs_consumed_total") == len(jobs) + 1,
              "jobs consumed = %d" % (len(jobs) + 1))
        for state in ("completed", "partial", "failed"):
            check(value(after, "fhirx_jobs_finished_total", state=state) == states[state],
                  "jobs finished {state=%s} = %d, as the status records say" % (state, states[state]))
        for metric, topic in (("fhirx_results_total", "fhirx.results"),
                              ("fhirx_failures_total", "fhirx.failures"),
                              ("fhirx_dead_letters_total", "fhirx.dlq"),
                              ("fhirx_status_records_total", "fhirx.status")):
            n = len(env.read(topic))
            check(value(after, metric) == n, "%s = %d messages on %s" % (metric, n, topic))
        sim = env.sim_get("/_sim/counters")["tenants"][SANDBOX]
        check(value(after, "fhirx_token_requests_total", tenant=SANDBOX) == sim["token_requests"],
              "token requests = the simulator's count (%d)" % sim["token_requests"])
        http = total(after, "fhirx_http_requests_total", tenant=SANDBOX)
        check(http == sim["fhir_requests"], "HTTP requests by class add up to the simulator's "
              "count (%d)" % sim["fhir_requests"])
        check(value(after, "fhirx_http_requests_total", tenant=SANDBOX, **{"class": "4xx"}) == 1,
              "the one 404 is counted as 4xx")
        check(value(after, "fhirx_http_request_duration_seconds_count", tenant=SANDBOX) == http,
              "the latency histogram counts every request")
        check(value(after, "fhirx_jobs_in_flight") == 0 and
              value(after, "fhirx_requests_in_flight") == 0, "nothing in flight at rest")
        check(value(after, "fhirx_breaker_state", tenant=SANDBOX) == 0, "breaker closed")
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


def wait_status_code(url, want, timeout, step=0.5):
    end = time.time() + timeout
    while time.time() < end:
        status, body, _ = get(url)
        if status == want:
            return body
        time.sleep(step)
    raise AssertionError("%s did not answer %d within %ds (last: %s %s)" % (
        url, want, timeout, status if status is not None else "nobody listening", body))


def scenario_health(check):
    env = Env()
    try:
        w = env.start_worker()
        admin = env.admin_url(w)
        status, body, _ = get(admin + "/healthz")
        check(status == 200 and json.loads(body)["alive"], "/healthz: alive, loops turning")
        body = wait_status_code(admin + "/readyz", 200, 30)
        check(json.loads(body)["producer_brokers_up"] > 0, "/readyz: ready once Kafka is reachable")
        env.control_post("/cluster/down")
        body = wait_status_code(admin + "/readyz", 503, 30)
        check(not json.loads(body)["ready"], "/readyz: not ready while every broker is down")
        status, _, _ = get(admin + "/healthz")
        check(status == 200, "/healthz: still alive (the process is fine, Kafka is not)")
        env.control_post("/cluster/up")
        wait_status_code(admin + "/readyz", 200, 60)
        check(True, "/readyz: ready again when the brokers are back")
        status, body, headers = get(admin + "/.well-known/jwks.json")
        cli = subprocess.run([FHIRX, "keys", "jwks", "--config", env.config], capture_output=True,
                             text=True, check=True).stdout
        check(status == 200 and json.loads(body) == json.loads(cli) and
              "max-age" in headers.get("Cache-Control", ""),
              "/.well-known/jwks.json serves what `fhirx keys jwks` prints, cacheable")
        # A job in flight keeps the worker draining (its request is held 4 s): /readyz
        # must say no meanwhile, and the job still finishes.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "path": "Patient", "delay_ms": 4000, "count": 1})
        env.enqueue([{"job_id": "draining", "tenant": SANDBOX, "patients": ["20000001"],
                      "resources": ["Patient"]}])
        wait_until("the job's request to be held", lambda: env.sim_get(
            "/_sim/tenants/%s/faults" % SANDBOX)["faults"][0]["fired"] == 1)
        w.send_signal(signal.SIGTERM)
        body = json.loads(wait_status_code(admin + "/readyz", 503, 30, step=0.05))
        check(body["draining"] and not body["ready"], "/readyz says no while draining")
        check(w.wait(60) == 0, "worker exits 0")
        s = env.wait_status(1)[0].json()
        check(s["job_id"] == "draining" and s["state"] == "completed",
              "the job in flight at SIGTERM finished before the worker exited")
    finally:
        env.close()


def scenario_reload(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10},
                       {"id": "newcomer", "patients": 10}])
    try:
        with open(env.config) as f:
            full = json.load(f)
        only_first = dict(full, tenants=[t for t in full["tenants"] if t["id"] == SANDBOX])
        with open(env.config, "w") as f:
            json.dump(only_first, f)
        w = env.start_worker()
        env.enqueue([{"job_id": "early", "tenant": "newcomer", "patients": ["20000001"],
                      "resources": TYPES}])
        s = env.wait_status(1)[0].json()
        check(s["state"] == "failed" and s["error_class"] == "unknown_tenant",
              "a job for an unconfigured tenant is dead-lettered (unknown_tenant)")
        # A slow job is running while the file changes under it: each of its 8 requests
        # is held 8 s, far longer than the two reloads take.
        env.sim_post("/_sim/tenants/%s/faults" % SANDBOX,
                     {"target": "fhir", "status": 0, "delay_ms": 8000, "count": 8})
        env.enqueue([{"job_id": "long", "tenant": SANDBOX, "patients": ["20000002", "20000003"],
                      "resources": TYPES}])
        wait_until("the long job's requests to be held", lambda: env.sim_get(
            "/_sim/tenants/%s/faults" % SANDBOX)["faults"][0]["fired"] >= 1)
        with open(env.config, "w") as f:
            f.write('{"tenants": [ broken')
        w.send_signal(signal.SIGHUP)
        refused = env.wait_log(w, "configuration reload refused; the running configuration stays")
        check(refused[0].get("reason"), "a broken file is refused, with the reason logged: %s" %
              refused[0].get("reason"))
        with open(env.config, "w") as f:
            json.dump(full, f)
        w.send_signal(signal.SIGHUP)
        applied = env.wait_log(w, "configuration reloaded: tenants applied to jobs from now on")
        check(applied[0].get("added") == "1", "SIGHUP applies the new tenant (%s)" % applied[0])
        check("long" not in {m.key for m in env.read("fhirx.status")},
              "the slow job was still running across both reloads")
        env.enqueue([{"job_id": "after", "tenant": "newcomer", "patients": ["20000004"],
                      "resources": TYPES}])
        statuses = {m.key: m.json() for m in env.wait_status(3)}
        check(statuses["long"]["state"] == "completed",
              "the job running across both reloads completed")
        check(statuses["after"]["state"] == "completed",
              "a job for the added tenant completes after the reload")
        r = subprocess.run([FHIRX, "replay", "--config", env.config, "--error-class",
                            "unknown_tenant"], capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, "the early job's dead letter replays: " + r.stdout.strip()[-200:])
        final = wait_until("a status of the early job's attempt 2", lambda: [
            m.json() for m in env.read("fhirx.status")
            if m.key == "early" and m.json()["attempt"] == 2])
        check(len(final) == 1 and final[0]["state"] == "completed", "and completes on attempt 2")
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


SCENARIOS = {"metrics": scenario_metrics, "health": scenario_health, "reload": scenario_reload}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))
