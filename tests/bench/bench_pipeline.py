#!/usr/bin/python3
"""Benchmark: a fixed extract through fhirx on the embedded Kafka + simulator.

Reports resources/s, worker CPU seconds per 1,000 resources, the worker's
peak RSS, token requests per tenant, requests per resource and the reference
cache's hit ratio. Measures and reports only: it asserts nothing about time.

  bench_pipeline.py [--jobs 200] [--patients-per-job 5] [--threads 2] [--json OUT]
                    [--no-references] [--page-size N] [--no-probe]
                    [--tenants 2] [--latency-ms 0] [--in-flight 64]

With the probe (the default), it then times the bare work of the same pages
in one process (tests/bench/probe.c: parse each page, dump each resource,
produce it with a delivery report) and reports fhirx's CPU per resource as a
ratio to it. --page-size N sets every search's _count to N (a profile file
derived from the Cerner profile), to see the cost per page.

--latency-ms L makes the simulator answer every FHIR request of every tenant
L ms late (a delay fault: the connection waits, no simulator thread does),
--tenants N spreads the jobs over N tenants and --in-flight R lets the worker
have R requests in flight in all (split over its threads and tenants): with
latency, throughput is bounded by R / L, and the report says how close it got
("of_in_flight_bound").
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../e2e"))
from e2e import SANDBOX, Env, FHIRX, log  # noqa: E402
import probe  # noqa: E402


def proc_cpu(p):
    """CPU seconds (user + system) a live child has used so far."""
    with open("/proc/%d/stat" % p.pid) as f:
        st = f.read().split(")")[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid):
    """Voluntary and involuntary context switches of a live process's threads so far."""
    n = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        n += int(line.split()[1])
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--patients-per-job", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--no-references", action="store_true",
                    help="do not follow references (the default follows them)")
    ap.add_argument("--page-size", type=int, default=0,
                    help="every search's _count (default: the Cerner profile's)")
    ap.add_argument("--no-probe", action="store_true", help="skip the bare-work probe")
    ap.add_argument("--tenants", type=int, default=2)
    ap.add_argument("--latency-ms", type=int, default=0,
                    help="every FHIR answer this late (default: none)")
    ap.add_argument("--in-flight", type=int, default=64,
                    help="FHIR requests in flight in all, over threads and tenants")
    a = ap.parse_args()
    tenants = [{"id": SANDBOX, "sandbox": True, "patients": 500}] + \
        [{"id": "hospital-%02d" % i, "patients": 500} for i in range(1, a.tenants)]
    per_thread = max(1, -(-a.in_flight // a.threads))
    per_tenant = max(1, -(-a.in_flight // a.tenants))
    for t in tenants:
        t["fhirx"] = {"max_concurrency": per_tenant}
    env = Env(tenants=tenants, worker_extra={
        "worker": {"threads": a.threads, "max_jobs_in_flight": max(32, per_thread),
                   "max_requests_in_flight": per_thread},
        # fhirx's own producer batching (the e2e harness shortens it for latency).
        "kafka": {"producer.linger.ms": 5},
        "log": {"level": "warn"}})
    try:
        jobs = []
        for i in range(a.jobs):
            t = tenants[i % len(tenants)]
            pats = ["%d" % (20000001 + (i * a.patients_per_job + k) % t["patients"])
                    for k in range(a.patients_per_job)]
            job = {"job_id": "bench-%05d" % i, "tenant": t["id"], "patients": pats}
            if not a.no_references:
                job["follow_references"] = True
            jobs.append(job)
        profile_path = probe.CERNER
        if a.page_size:
            profile_path = probe.profile_with_page_size(
                os.path.join(env.dir, "profile.json"), a.page_size)
            with open(env.config) as f:
                cfg = json.load(f)
            for t in cfg["tenants"]:
                t["profile"] = profile_path
            with open(env.config, "w") as f:
                json.dump(cfg, f, indent=1)
        if a.latency_ms:
            for t in tenants:
                env.sim_post("/_sim/tenants/%s/faults" % t["id"],
                             {"name": "bench-latency", "target": "fhir", "path": "*",
                              "delay_ms": a.latency_ms, "count": -1})
        env.enqueue(jobs)  # queued before the worker starts: it runs flat out
        helpers = {p.name: p for p in env.procs}  # the simulator and the embedded Kafka
        helpers_before = {n: proc_cpu(p) for n, p in helpers.items()}
        worker = subprocess.Popen([FHIRX, "worker", "--config", env.config],
                                  stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(env.dir, "worker.log"), "wb"))
        t0 = time.time()
        while True:
            n = len(env.read("fhirx.status"))
            if n >= a.jobs:
                break
            if time.time() - t0 > 900:
                raise SystemExit("benchmark timed out with %d of %d jobs" % (n, a.jobs))
            time.sleep(0.5)
        t_end = time.time()
        helpers_cpu = {n: round(proc_cpu(p) - helpers_before[n], 2) for n, p in helpers.items()}
        switches = context_switches(worker.pid)
        worker.send_signal(15)
        _, status, ru = os.wait4(worker.pid, 0)
        statuses = {m.key: m.json() for m in env.read("fhirx.status")}
        resources = sum(s["resources"] for s in statuses.values())
        ref_fetched = sum(s["references_fetched"] for s in statuses.values())
        ref_cached = sum(s["references_cached"] for s in statuses.values())
        states = {}
        for s in statuses.values():
            states[s["state"]] = states.get(s["state"], 0) + 1
        counters = env.sim_get("/_sim/counters")["tenants"]
        tokens = {t: c.get("token_requests", 0) for t, c in counters.items()}
        fhir = sum(c.get("fhir_requests", 0) for c in counters.values())
        cpu = ru.ru_utime + ru.ru_stime
        # The processing window from the status records themselves: the first
        # job's start to the last job's end (the ~3 s group join is excluded).
        from datetime import datetime
        def ts(x):
            return datetime.strptime(x, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
        busy = max(ts(s["finished_at"]) for s in statuses.values()) - \
            min(ts(s["started_at"]) for s in statuses.values())
        out = {
            "jobs": a.jobs, "patients": a.jobs * a.patients_per_job, "threads": a.threads,
            "states": states, "resources": resources,
            "wall_seconds_total": round(t_end - t0, 2),
            "processing_seconds": round(busy, 2),
            "resources_per_second": round(resources / busy, 1) if busy > 0 else None,
            "worker_cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_1000_resources": round(cpu / resources * 1000, 3) if resources else None,
            "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
            "token_requests_per_tenant": tokens,
            "fhir_requests": fhir,
            "requests_per_resource": round(fhir / resources, 3) if resources else None,
            "references_fetched": ref_fetched,
            "references_from_cache": ref_cached,
            "reference_cache_hit_ratio": round(ref_cached / (ref_fetched + ref_cached), 3)
            if ref_fetched + ref_cached else None,
            "worker_exit": os.waitstatus_to_exitcode(status),
            "page_size": a.page_size or "profile",
            "tenants": a.tenants, "latency_ms": a.latency_ms, "in_flight": a.in_flight,
            # What else used the machine's CPUs meanwhile (they include the ~3 s group join).
            "helpers_cpu_seconds": helpers_cpu,
            "machine_cpus": os.cpu_count(),
            # Wake-ups: the threads alive at the end, start-up included.
            "worker_context_switches_per_resource": round(switches / resources, 3) if resources else None,
        }
        if a.latency_ms and busy > 0:
            bound = a.in_flight / (a.latency_ms / 1000.0)
            out["requests_per_second"] = round(fhir / busy, 1)
            out["of_in_flight_bound"] = round(fhir / busy / bound, 3)
        out["cpu_us_per_resource"] = round(cpu / resources * 1e6, 1) if resources else None
        if not a.no_probe and resources:
            # The same pages, fetched again (not timed), then their bare work
            # timed in one process: a sample of patients, repeated to a
            # similar volume.
            sample = sorted({p for j in jobs if j["tenant"] == SANDBOX for p in j["patients"]})[:100]
            pages = os.path.join(env.dir, "pages.ndjson")
            base = "%s/r4/%s" % (env.sim_url, SANDBOX)
            probe.collect_pages(env, env.config, SANDBOX, base, sample, profile_path, pages)
            once = probe.run_probe(env.bootstrap, pages, "pages", 1)
            repeat = max(1, round(resources / once["resources"])) if once["resources"] else 1
            pr = probe.run_probe(env.bootstrap, pages, "pages", repeat)
            out["probe"] = pr
            out["probe_cpu_us_per_resource"] = pr["cpu_us_per_resource"]
            out["ratio_to_probe"] = round(out["cpu_us_per_resource"] / pr["cpu_us_per_resource"], 2) \
                if pr["cpu_us_per_resource"] else None
        print(json.dumps(out, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
    finally:
        env.close()


if __name__ == "__main__":
    main()
