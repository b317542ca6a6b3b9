#!/usr/bin/python3
"""Benchmark: one Group bulk $export whose Observation file is one ~20 MB NDJSON
file (gzip on the wire, through a 307 to the simulator's storage port).

Reports the file's size, resources/s, worker CPU per 1,000 resources, the
worker's resident memory before the export and its peak after (VmHWM), and
token requests. The download is streamed line by line into Kafka: peak memory
should stay far below the file's size. Measures and reports; with --check it
also asserts that the peak grew by less than half the file (a worker holding
the file would grow by more than the whole of it). It never asserts time.

  bench_bulk.py [--patients 600] [--observations 40] [--json OUT] [--check] [--no-probe]

With the probe (the default), the bare work of the same resources is then
timed in one process (tests/bench/probe.c, ndjson mode: parse each line,
dump it compact, produce it with a delivery report) and fhirx's CPU per
resource is reported as a ratio to it.
"""
import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../e2e"))
from e2e import SANDBOX, Env, log  # noqa: E402
import probe  # noqa: E402


def under_tsan(pid):
    """True when the process runs with the ThreadSanitizer runtime (a -DFHIRX_TSAN=ON build)."""
    with open("/proc/%d/maps" % pid) as f:
        return "libtsan" in f.read()


def proc_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=600)
    ap.add_argument("--observations", type=int, default=40)
    ap.add_argument("--json")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--no-probe", action="store_true", help="skip the bare-work probe")
    a = ap.parse_args()
    tenant = {"id": SANDBOX, "patients": a.patients, "per_patient": {"Observation": a.observations},
              "groups": [{"id": "everyone", "first": 1, "count": a.patients}],
              "export": {"duration_ms": 500, "retry_after_s": 1, "file_max_resources": 1000000}}
    # The producer's queue is bounded (8 MiB) so that memory measures the
    # download path, and the download has to pause whenever Kafka lags.
    # Under AddressSanitizer (the CI's second run) freed memory sits in a 256 MiB quarantine,
    # which would read as growth: keep it out of the measurement (no effect on normal builds).
    os.environ["ASAN_OPTIONS"] = (os.environ.get("ASAN_OPTIONS", "") +
                                  ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0").lstrip(":")
    env = Env(tenants=[tenant], worker_extra={
        "bulk": {"poll_min_ms": 200},
        "kafka": {"producer.queue.buffering.max.kbytes": 2048},
        "log": {"level": "warn"}})
    try:
        w = env.start_worker()
        time.sleep(4)  # joined the groups; the baseline is an idle, connected worker
        rss_before = proc_kib(w.pid, "VmRSS")
        hwm_before = proc_kib(w.pid, "VmHWM")
        with open("/proc/%d/stat" % w.pid) as f:
            st = f.read().split(")")[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu_before = (int(st[11]) + int(st[12])) / tick
        env.enqueue([{"kind": "bulk", "job_id": "bench-bulk", "tenant": SANDBOX,
                      "group": "everyone", "resources": ["Observation"]}])
        status = env.wait_status(1, timeout=900)[-1].json()
        with open("/proc/%d/stat" % w.pid) as f:
            st = f.read().split(")")[1].split()
        cpu = (int(st[11]) + int(st[12])) / tick - cpu_before
        hwm_after = proc_kib(w.pid, "VmHWM")
        tsan = under_tsan(w.pid)
        results = [m for m in env.read("fhirx.results") if m.headers.get("fhirx-job-id") == "bench-bulk"]
        ndjson_bytes = sum(len(m.value) + 1 for m in results)
        counters = env.sim_get("/_sim/counters")
        w.send_signal(signal.SIGTERM)
        rc = w.wait(60)
        from datetime import datetime

        def ts(x):
            return datetime.strptime(x, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
        busy = ts(status["finished_at"]) - ts(status["started_at"])
        out = {
            "state": status["state"],
            "resources": status["resources"],
            "files": status["bulk"]["files"],
            "ndjson_mib": round(ndjson_bytes / 2**20, 1),
            "gzip_mib_on_the_wire": round(counters["storage"]["bytes"] / 2**20, 1),
            "export_seconds_including_server_time": round(busy, 2),
            "resources_per_second": round(status["resources"] / busy, 1) if busy > 0 else None,
            "worker_cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_1000_resources": round(cpu / status["resources"] * 1000, 3)
            if status["resources"] else None,
            "rss_before_mib": round(rss_before / 1024, 1),
            "peak_rss_before_mib": round(hwm_before / 1024, 1),
            "peak_rss_after_mib": round(hwm_after / 1024, 1),
            "peak_growth_mib": round((hwm_after - hwm_before) / 1024, 1),
            "token_requests": counters["tenants"][SANDBOX]["token_requests"],
            "worker_exit": rc,
        }
        if status["resources"]:
            out["cpu_us_per_resource"] = round(cpu / status["resources"] * 1e6, 1)
        if not a.no_probe and results:
            # The resources fhirx published, one per line, as the file held them.
            lines = os.path.join(env.dir, "bulk.ndjson")
            with open(lines, "wb") as f:
                for m in results:
                    f.write(m.value + b"\n")
            pr = probe.run_probe(env.bootstrap, lines, "ndjson", 1)
            out["probe"] = pr
            out["probe_cpu_us_per_resource"] = pr["cpu_us_per_resource"]
            out["ratio_to_probe"] = round(out["cpu_us_per_resource"] / pr["cpu_us_per_resource"], 2) \
                if pr["cpu_us_per_resource"] else None
        print(json.dumps(out, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
        if a.check:
            problems = []
            if status["state"] != "completed" or len({m.key for m in results}) != a.patients * a.observations:
                problems.append("the export did not publish every Observation once (%s, %d)"
                                % (status["state"], len({m.key for m in results})))
            if ndjson_bytes < 20 * 2**20:
                problems.append("the file is only %.1f MiB; the check needs >= 20" % (ndjson_bytes / 2**20))
            # Under ThreadSanitizer (make tsan-test) RSS is not a measure of what the worker
            # holds: every byte it touches has shadow and metadata in RSS too, and that grew
            # 43 MiB in one TSan run and 72 MiB in another for this same file (a normal build
            # grows ~7). So the streaming bound is asserted by the normal and ASan runs of this
            # test (make test, make asan-test), and a TSan run reports the figure only; it
            # still checks every Observation arrived once and the worker exited 0.
            allowed = ndjson_bytes / 2
            grew = (hwm_after - hwm_before) * 1024
            if tsan:
                log("under ThreadSanitizer: peak RSS grew by %.1f MiB (reported, not checked: "
                    "shadow memory)" % (grew / 2**20))
            elif grew > allowed:
                problems.append("peak RSS grew by %.1f MiB for a %.1f MiB file: not streamed"
                                % ((hwm_after - hwm_before) / 1024, ndjson_bytes / 2**20))
            if rc != 0:
                problems.append("the worker exited %d" % rc)
            for p in problems:
                log("FAIL: " + p)
            if problems:
                raise SystemExit(1)
            log("ok: %.1f MiB streamed with a peak RSS growth of %.1f MiB"
                % (ndjson_bytes / 2**20, (hwm_after - hwm_before) / 1024))
    finally:
        env.close()


if __name__ == "__main__":
    main()
