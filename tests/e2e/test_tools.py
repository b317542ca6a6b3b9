#!/usr/bin/python3
"""The tools around the worker end to end: `fhirx replay` and `fhirx enqueue`,
on the embedded Kafka and the Cerner simulator.

  test_tools.py SCENARIO   (replay_scope | replay_parking | replay_kill | replay_kill_many |
                            enqueue_ndjson | enqueue_bulk)

replay_scope    a job fails for a missing scope and is dead-lettered; the scope is
                granted at the simulator; a replay filtered on the class completes it
                and its status record shows attempt 2
replay_parking  jobs past replay.max_attempts, and dead letters that are not jobs, go to
                the parking topic with the reason; --from-parking sends one back
replay_kill     a replay killed (SIGKILL) halfway and run again: every dead letter replayed
                exactly once; the filters, checked with --dry-run
replay_kill_many  killed three times in a row (batches of 25, 7, 200, parked letters among
                them), then run to the end: still each dead letter exactly once
enqueue_ndjson  a 10,000-line NDJSON file becomes exactly the expected jobs, the bad lines
                rejected by line number; --dry-run, --strict, CSV, usage errors
enqueue_bulk    `fhirx enqueue --group` produces one bulk job (valid against job.schema.json)
                that the workers' parser reads back unchanged; the same request keeps its
                id; mistakes name the option and produce nothing; usage errors"""
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from e2e import FHIRX, SANDBOX, Check, Env, log, read_topic

ALL_SCOPES = ["system/%s.read" % t for t in (
    "Patient", "Observation", "Condition", "Encounter", "AllergyIntolerance", "Procedure",
    "Immunization", "MedicationRequest", "CarePlan", "CareTeam", "Goal", "Device", "Coverage",
    "DiagnosticReport", "DocumentReference", "ServiceRequest", "RelatedPerson", "Practitioner",
    "Organization", "Location", "Binary")]
NO_CONDITION = [s for s in ALL_SCOPES if s != "system/Condition.read"]
HERE = os.path.dirname(os.path.abspath(__file__))


def fhirx(*args, stdin=None, timeout=180, env_extra=None):
    envv = dict(os.environ)
    envv.update(env_extra or {})
    started = time.time()
    r = subprocess.run([FHIRX] + list(args), capture_output=True, text=True, input=stdin,
                       timeout=timeout, env=envv)
    r.seconds = time.time() - started
    log("$ fhirx %s -> %d (%.1f s)" % (" ".join(args[:1] + tuple(a for a in args[1:] if "/" not in a)),
                                       r.returncode, r.seconds))
    for line in (r.stdout.strip().splitlines()[-12:] + r.stderr.strip().splitlines()[-8:]):
        log("    " + line[:300])
    return r


def committed(env, group, topic):
    """{partition: committed offset} of group on topic (-1001 when none)."""
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
    got = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    c.close()
    return got


def ends(env, topic):
    c = Consumer({"bootstrap.servers": env.bootstrap, "group.id": "e2e-ends",
                  "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    out = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
           for p in md.topics[topic].partitions}
    c.close()
    return out


def status_of(env, job_id, attempt, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        for m in env.read("fhirx.status"):
            v = m.json()
            if v["job_id"] == job_id and v["attempt"] == attempt:
                return v
        time.sleep(0.5)
    raise AssertionError("no status for %s attempt %d after %d s" % (job_id, attempt, timeout))


def expected(env, tenant, patients, types):
    keys = set()
    for p in patients:
        q = "/_sim/tenants/%s/expected?patient=%s&types=%s" % (tenant, p, ",".join(types))
        keys.update(env.sim_get(q)["resources"])
    return keys


def validate(env, topics, expect_status=None, check_jobs=False):
    argv = [sys.executable, os.path.join(HERE, "../schemas/validate_topics.py"),
            "--bootstrap", env.bootstrap, "--schemas", os.path.join(HERE, "../../schemas"),
            "--topics", topics, "--timeout", "60"]
    if expect_status:
        argv += ["--expect-status", str(expect_status)]
    if check_jobs:
        argv.append("--check-jobs")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    return r.returncode, (r.stdout + r.stderr).strip()


def summary_numbers(text):
    """The counts of replay's one-line summary."""
    m = re.search(r"(\d+) replayed to \S+, (\d+) (?:parked to \S+|left parked) \((\d+) at the attempt "
                  r"limit, (\d+) not replayable\), (\d+) skipped by the filter, (\d+) already "
                  r"replayed by an interrupted run; (\d+) read from", text)
    assert m, "no summary in: " + text
    keys = ("replayed", "parked", "limit", "invalid", "skipped", "already", "read")
    return dict(zip(keys, map(int, m.groups())))


def tasks_of(job):
    """A job's (patient, type) tasks, whichever form it is written in."""
    if "tasks" in job:
        return {(t["patient"], r) for t in job["tasks"] for r in t["resources"]}
    return {(p, r) for p in job["patients"] for r in job["resources"]}


def grant_all_scopes(env, tenant):
    """Ticks the missing scope for the client (as in Code Console) and revokes the
    tokens issued so far, so the worker's next request gets a 401 and its token
    cache fetches a token with the new scope. In production the worker refreshes
    its token at the latest when it expires (570 s on Cerner); restarting the
    workers forces it."""
    env.sim_post("/_sim/tenants/%s/clients" % tenant,
                 {"client_id": "fhirx-e2e", "jwks_file": os.path.join(env.dir, "jwks.json"),
                  "scopes": ALL_SCOPES})
    env.sim_post("/_sim/tenants/%s/settings" % tenant, {"revoke_tokens": True})


# ---- replay_scope ---------------------------------------------------------------------

def scenario_replay_scope(check):
    env = Env(scopes=NO_CONDITION)
    try:
        w = env.start_worker()
        types = ["Patient", "Condition", "Observation"]
        patients = ["20000001", "20000002"]
        r = fhirx("enqueue", "--config", env.config, "--tenant", SANDBOX, "--patients",
                  ",".join(patients), "--resources", ",".join(types), "--job-id", "scope-1")
        check(r.returncode == 0 and "scope-1" in r.stdout, "fhirx enqueue produced job scope-1")
        env.enqueue([{"job_id": "who", "tenant": "no-such-tenant", "patients": ["1"]}])
        first = {m.key: m.json() for m in env.wait_status(2)}
        check(first["scope-1"]["state"] == "partial" and first["scope-1"]["error_class"] == "scope",
              "without system/Condition.read the job is partial, class scope")
        dlq = {m.key: m for m in env.read("fhirx.dlq", 2)}
        dl = dlq["scope-1"]
        check(dl.headers["fhirx-error-class"] == "scope" and dl.headers["fhirx-http-status"] == "403"
              and dl.headers["fhirx-attempt"] == "1", "it is dead-lettered: scope, 403, attempt 1")
        check(tasks_of(dl.json()) == {(p, "Condition") for p in patients},
              "the dead letter is narrowed to the Condition tasks")
        dl_pos = "fhirx.dlq/%d/%d" % (dl.partition, dl.offset)
        jobs_before = len(env.read("fhirx.jobs"))

        r = fhirx("replay", "--config", env.config, "--error-class", "scope", "--dry-run")
        check(r.returncode == 0 and re.search(r"%s\s+scope\s+1\s+0\s+0" % SANDBOX, r.stdout)
              and "replay " + dl_pos in r.stdout and "attempt 1 -> 2" in r.stdout,
              "--dry-run prints the counts per tenant and class, then the letters")
        check(summary_numbers(r.stdout)["replayed"] == 1 and
              summary_numbers(r.stdout)["skipped"] == 1, "dry run: 1 would be replayed, 1 skipped")
        check(len(env.read("fhirx.jobs")) == jobs_before, "--dry-run produced nothing")
        check(all(o < 0 for o in committed(env, "fhirx-replay;error-class=scope", "fhirx.dlq").values()),
              "--dry-run committed nothing")

        grant_all_scopes(env, SANDBOX)
        r = fhirx("replay", "--config", env.config, "--error-class", "scope")
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["replayed"] == 1 and n["skipped"] == 1 and n["parked"] == 0,
              "replay --error-class scope replays the scope letter and skips the other")
        replayed = [m for m in env.read("fhirx.jobs") if m.headers.get("fhirx-replayed-from")]
        check(len(replayed) == 1 and replayed[0].key == "scope-1" and
              replayed[0].headers["fhirx-replayed-from"] == dl_pos,
              "the job is back on fhirx.jobs keyed scope-1, fhirx-replayed-from %s" % dl_pos)
        job = replayed[0].json()
        check(job["attempt"] == 2 and tasks_of(job) == tasks_of(dl.json()),
              "as the dead letter was, with attempt 2")
        second = status_of(env, "scope-1", 2)
        check(second["state"] == "completed" and second["attempt"] == 2 and second["failures"] == 0,
              "the replayed job completes; its status record shows attempt 2")
        conditions = {m.key.split("/", 1)[1] for m in env.read("fhirx.results")
                      if m.headers.get("fhirx-job-id") == "scope-1" and m.headers.get("fhirx-attempt") == "2"}
        want = expected(env, SANDBOX, patients, ["Condition"])
        check(conditions == want and want, "attempt 2 fetched exactly the missing Conditions (%d)" % len(want))
        everything = {m.key.split("/", 1)[1] for m in env.read("fhirx.results")
                      if m.headers.get("fhirx-job-id") == "scope-1"}
        check(everything == expected(env, SANDBOX, patients, types),
              "both attempts together published everything the job asked for")

        r = fhirx("replay", "--config", env.config, "--error-class", "scope")
        check(r.returncode == 0 and summary_numbers(r.stdout)["read"] == 0,
              "running it again continues where it stopped: nothing left to read")
        check(all(o < 0 for o in committed(env, "fhirx-replay", "fhirx.dlq").values()),
              "the filtered run did not move the unfiltered group's position")
        rc, out = validate(env, "results,failures,dlq,status", expect_status=3, check_jobs=True)
        check(rc == 0, "every output validates against schemas/:\n" + out)
        check(env.stop(w) == 0, "worker exits 0")
        check("Bearer" not in env.logs("worker"), "no token in the logs")
    finally:
        env.close()


# ---- replay_parking --------------------------------------------------------------------

def dead_letter_headers(job_id, tenant, cls, attempt, orig, reason="a test dead letter",
                        when="2026-11-30T06:10:00.000Z", extra=None):
    h = {"fhirx-error-class": cls, "fhirx-reason": reason, "fhirx-original-topic": "fhirx.jobs",
         "fhirx-original-partition": str(orig[0]), "fhirx-original-offset": str(orig[1]),
         "fhirx-original-timestamp": "1796019000000", "fhirx-job-id": job_id,
         "fhirx-attempt": str(attempt), "fhirx-first-failure": when, "fhirx-last-failure": when}
    if tenant:
        h["fhirx-tenant"] = tenant
    h.update(extra or {})
    return h


def produce_dead_letters(env, letters):
    """letters: (key, value bytes, headers dict)."""
    p = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 5})
    errors = []
    for key, value, headers in letters:
        p.produce("fhirx.dlq", key=key.encode(), value=value, headers=list(headers.items()),
                  on_delivery=lambda err, msg: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0 and not errors, errors


def scenario_replay_parking(check):
    env = Env(scopes=NO_CONDITION, worker_extra={"replay": {"max_attempts": 2}})
    try:
        w = env.start_worker()
        env.enqueue([{"job_id": "park-1", "tenant": SANDBOX, "patients": ["20000003"],
                      "resources": ["Patient", "Condition"]},
                     b"this is not json {",
                     {"job_id": "who", "tenant": "no-such-tenant", "patients": ["1"]}])
        env.wait_status(3)
        # A dead letter whose original was too large to copy (as the worker writes it).
        produce_dead_letters(env, [("offset:fhirx.jobs/0/99", b"", dead_letter_headers(
            "offset:fhirx.jobs/0/99", None, "invalid_job", 1, (0, 99),
            extra={"fhirx-value-omitted": "original-too-large"}))])
        dlq = env.read("fhirx.dlq", 4)
        check(len(dlq) == 4, "four dead letters: scope, not JSON, unknown tenant, too large")

        r = fhirx("replay", "--config", env.config)
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["replayed"] == 1 and n["parked"] == 3 and n["invalid"] == 3,
              "the job is replayed; the three that are not runnable jobs are parked")
        second = status_of(env, "park-1", 2)
        check(second["state"] == "failed" and second["error_class"] == "scope",
              "attempt 2 fails again (the scope is still missing): %s" % second)
        env.read("fhirx.dlq", 5)
        r = fhirx("replay", "--config", env.config)
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["read"] == 1 and n["parked"] == 1 and n["limit"] == 1,
              "the next replay parks it: attempt 2 of replay.max_attempts 2")

        parked = {m.key: m for m in env.read("fhirx.parking", 4)}
        check(len(parked) == 4, "four parked letters")
        p = parked["park-1"]
        check(p.headers["fhirx-parked-reason"].startswith("attempt limit 2 reached: attempt 2 failed"),
              "reason: %s" % p.headers["fhirx-parked-reason"])
        for key, m in parked.items():
            dl = [d for d in env.read("fhirx.dlq") if d.key == key][-1]
            same = {k: v for k, v in m.headers.items() if k != "fhirx-parked-reason"}
            if m.value != dl.value or same != dl.headers:
                check(False, "parked %s is not its dead letter plus a reason" % key)
        check(True, "each parked letter is its dead letter: key, value and headers, plus the reason")
        reasons = {k: m.headers["fhirx-parked-reason"] for k, m in parked.items()}
        log(json.dumps(reasons, indent=1))
        raw = [m for m in parked.values() if m.value == b"this is not json {"]
        check(len(raw) == 1 and "not a JSON object" in raw[0].headers["fhirx-parked-reason"],
              "the unparseable original is parked as not replayable, its bytes unchanged")
        check("unknown_tenant" in reasons["who"] and "from-parking" in reasons["who"],
              "the unknown tenant's job is parked, saying how to send it back")
        check("too large" in reasons["offset:fhirx.jobs/0/99"] and "fhirx.jobs/0/99" in
              reasons["offset:fhirx.jobs/0/99"], "the omitted original is parked, naming where it is")
        rc, out = validate(env, "results,failures,dlq,status,parking")
        check(rc == 0, "dead letters and parked letters validate against schemas/:\n" + out)

        # Once the cause is fixed (here: more attempts allowed), --from-parking sends it back.
        r = fhirx("replay", "--config", env.config, "--from-parking", "--max-attempts", "3",
                  "--dry-run")
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["replayed"] == 1 and n["parked"] == 3,
              "--from-parking --dry-run: 1 would go back, 3 stay parked")
        r = fhirx("replay", "--config", env.config, "--from-parking", "--max-attempts", "3")
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["replayed"] == 1 and "fhirx-replay.parking" in r.stdout,
              "--from-parking --max-attempts 3 sends park-1 back (group fhirx-replay.parking)")
        back = [m for m in env.read("fhirx.jobs") if
                m.headers.get("fhirx-replayed-from", "").startswith("fhirx.parking/")]
        check(len(back) == 1 and back[0].json()["attempt"] == 3, "as attempt 3")
        check(status_of(env, "park-1", 3)["attempt"] == 3, "and the worker runs attempt 3")
        check(len(env.read("fhirx.parking")) == 4, "replaying from parking parks nothing again")
        check(env.stop(w) == 0, "worker exits 0")
    finally:
        env.close()


# ---- replay_kill -----------------------------------------------------------------------

def scenario_replay_kill(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30},
                       {"id": "hospital-b", "patients": 40}])
    try:
        # 400 dead letters (no worker runs: the replayed jobs stay on fhirx.jobs).
        # The first half failed two days ago, the rest now; every tenth is hospital-b's.
        old = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 2 * 86400))
        new = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        letters = []
        for i in range(400):
            tenant = "hospital-b" if i % 10 == 0 else SANDBOX
            job_id = "k-%04d" % i
            value = json.dumps({"job_id": job_id, "tenant": tenant,
                                "tasks": [{"patient": "%d" % (20000001 + i % 30),
                                           "resources": ["Observation"]}], "attempt": 1}).encode()
            letters.append((job_id, value, dead_letter_headers(
                job_id, tenant, "transient", 1, (i % 6, 1000 + i), when=old if i < 200 else new)))
        produce_dead_letters(env, letters)
        dlq = env.read("fhirx.dlq", 400)
        positions = {"fhirx.dlq/%d/%d" % (m.partition, m.offset) for m in dlq}
        check(len(positions) == 400, "400 dead letters on fhirx.dlq")

        # The filters, seen through --dry-run (which commits nothing).
        n = summary_numbers(fhirx("replay", "--config", env.config, "--dry-run", "--since", "1d").stdout)
        check(n["replayed"] == 200 and n["skipped"] == 200, "--since 1d selects the recent 200")
        n = summary_numbers(fhirx("replay", "--config", env.config, "--dry-run", "--until", "1d").stdout)
        check(n["replayed"] == 200 and n["skipped"] == 200, "--until 1d selects the old 200")
        n = summary_numbers(fhirx("replay", "--config", env.config, "--dry-run", "--tenant",
                                  "hospital-b", "--error-class", "transient,throttled").stdout)
        check(n["replayed"] == 40, "--tenant hospital-b --error-class transient,throttled: 40")
        n = summary_numbers(fhirx("replay", "--config", env.config, "--dry-run", "--job-id",
                                  "k-0007,k-0399", "--show", "1").stdout)
        check(n["replayed"] == 2, "--job-id k-0007,k-0399: 2")
        n = summary_numbers(fhirx("replay", "--config", env.config, "--dry-run", "--error-class",
                                  "scope").stdout)
        check(n["replayed"] == 0 and n["skipped"] == 400, "--error-class scope: none")

        def jobs_count():
            return sum(ends(env, "fhirx.jobs").values())

        log("replay, to be killed once 150 jobs are on fhirx.jobs (in its second batch)")
        p = subprocess.Popen([FHIRX, "replay", "--config", env.config, "--rate", "100"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.time() + 60
        while jobs_count() < 150 and time.time() < end and p.poll() is None:
            time.sleep(0.05)
        check(p.poll() is None, "replay still running at %d jobs" % jobs_count())
        p.send_signal(signal.SIGKILL)
        p.communicate()
        killed_at = jobs_count()
        # Dead letters the killed run committed (its last commit is the marker of the batch
        # it was producing: that batch's first offsets).
        done_at_kill = sum(max(o, 0) for o in committed(env, "fhirx-replay", "fhirx.dlq").values())
        check(killed_at < 400, "killed halfway, with %d of 400 jobs produced, %d dead letters "
                               "committed" % (killed_at, done_at_kill))
        r = fhirx("replay", "--config", env.config, "--rate", "100")
        n = summary_numbers(r.stdout)
        check(r.returncode == 0 and n["read"] == 400 - done_at_kill and
              n["replayed"] == 400 - killed_at and n["already"] == killed_at - done_at_kill and
              n["skipped"] == n["parked"] == 0,
              "run again, it reads the %d uncommitted dead letters and replays exactly the %d "
              "the killed run had not produced: %s" % (400 - done_at_kill, 400 - killed_at, n))
        check(n["already"] > 0, "it found the %d jobs the killed run had produced but not committed, "
                                "and did not produce them again" % n["already"])
        jobs = [m for m in env.read("fhirx.jobs", 400)]
        froms = collections.Counter(m.headers.get("fhirx-replayed-from") for m in jobs)
        dup = [k for k, v in froms.items() if v > 1]
        check(not dup, "no dead letter replayed twice (%d duplicates)" % len(dup))
        check(set(froms) == positions, "every dead letter replayed exactly once (%d jobs)" % len(jobs))
        check(all(m.json()["attempt"] == 2 and m.key == m.json()["job_id"] for m in jobs),
              "each as attempt 2, keyed by its job id")
        check(committed(env, "fhirx-replay", "fhirx.dlq") == ends(env, "fhirx.dlq"),
              "the group committed up to the end of fhirx.dlq")
        r = fhirx("replay", "--config", env.config)
        check(r.returncode == 0 and summary_numbers(r.stdout)["read"] == 0 and jobs_count() == 400,
              "another run has nothing to do")
    finally:
        env.close()


def scenario_replay_kill_many(check):
    """Killed three times in a row, in batches of different sizes, with letters that
    go to the parking topic: each run must carry forward what the interrupted ones
    left, or a later kill makes it forget and a dead letter goes out twice."""
    env = Env()
    try:
        letters = []
        for i in range(700):
            job_id = "t-%04d" % i
            attempt = 5 if i % 37 == 0 else 1  # at replay.max_attempts (5): parked
            value = json.dumps({"job_id": job_id, "tenant": SANDBOX,
                                "tasks": [{"patient": "20000001", "resources": ["Condition"]}],
                                "attempt": attempt}).encode()
            letters.append((job_id, value, dead_letter_headers(job_id, SANDBOX, "scope", attempt,
                                                               (0, i))))
        produce_dead_letters(env, letters)
        positions = {"fhirx.dlq/%d/%d" % (m.partition, m.offset) for m in env.read("fhirx.dlq", 700)}

        def produced():
            return sum(ends(env, "fhirx.jobs").values()) + sum(ends(env, "fhirx.parking").values())

        for batch, more in (("25", 60), ("7", 40), ("200", 110)):
            target = produced() + more
            p = subprocess.Popen([FHIRX, "replay", "--config", env.config, "--rate", "150",
                                  "--batch", batch], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
            end = time.time() + 60
            while produced() < target and time.time() < end and p.poll() is None:
                time.sleep(0.01)
            check(p.poll() is None, "replay (--batch %s) running at %d outputs" % (batch, produced()))
            p.send_signal(signal.SIGKILL)
            p.communicate()
            log("killed at %d outputs" % produced())
        r = fhirx("replay", "--config", env.config, "--batch", "60")
        n = summary_numbers(r.stdout)
        # Whether the third kill landed inside a batch depends on timing (a batch is cut short
        # when the consumer idles, which a loaded machine makes likely), so the count is shown,
        # not required; replay_kill requires it, and the exactly-once check below is the point.
        check(r.returncode == 0,
              "the fourth run finishes (%d recognized as produced by the third)" % n["already"])
        froms = collections.Counter(m.headers.get("fhirx-replayed-from")
                                    for m in env.read("fhirx.jobs"))
        parked = collections.Counter(m.key for m in env.read("fhirx.parking"))
        dup = sorted(k for k, v in list(froms.items()) + list(parked.items()) if v > 1)
        handled = len(froms) + len(parked)
        check(not dup and handled == len(positions) and len(parked) == 19,
              "every one of 700 dead letters handled exactly once after three kills: %d jobs, %d "
              "parked (%d twice: %s)" % (len(froms), len(parked), len(dup), dup[:5]))
        check(set(froms) <= positions, "each job names its dead letter")
    finally:
        env.close()


# ---- enqueue_ndjson --------------------------------------------------------------------

def expected_jobs(lines, default_tenant, batch, prefix, configured, per_patient_types):
    """What enqueue must make of the lines: the grouping of jobinput.h, in Python."""
    bad, groups, order, jobs, number = set(), {}, [], [], [0]
    seen = collections.defaultdict(set)

    def emit(content):
        if "job_id" not in content:
            number[0] += 1
            content = dict(job_id="%s-%06d" % (prefix, number[0]), **content)
        jobs.append(content)

    def flush(key):
        tenant, types, since, follow = key
        job = {"tenant": tenant, "patients": groups[key]}
        if types:
            job["resources"] = types
        if since:
            job["since"] = since
        if follow:
            job["follow_references"] = True
        groups[key] = []
        emit(job)

    for no, (kind, line) in enumerate(lines, 1):
        if kind == "bad":
            bad.add(no)
            continue
        if kind == "blank":
            continue
        d = json.loads(line)
        if kind == "job":
            emit(d)
            continue
        tenant = d.get("tenant", default_tenant)
        types = tuple(sorted(d.get("resources", []), key=per_patient_types.index))
        key = (tenant, types, d.get("since"), d.get("follow_references", False))
        if d["patient"] in seen[key]:
            continue
        seen[key].add(d["patient"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(d["patient"])
        if len(groups[key]) == batch:
            flush(key)
    for key in order:
        if groups[key]:
            flush(key)
    for j in jobs:
        if "resources" in j:
            j["resources"] = list(j["resources"])
    return jobs, bad


TYPE_ORDER = ["AllergyIntolerance", "Binary", "CarePlan", "CareTeam", "Condition", "Coverage",
              "Device", "DiagnosticReport", "DocumentReference", "Encounter", "Goal",
              "Immunization", "Location", "MedicationRequest", "Observation", "Organization",
              "Patient", "Practitioner", "Procedure", "RelatedPerson", "ServiceRequest"]


def make_lines(n):
    """n NDJSON lines: patients of two tenants with a few settings, whole jobs,
    blank lines, a repeated patient, and bad lines of every kind at known places."""
    bad_kinds = [
        '{"patient": "bad id!"}',
        '{"patient": "3000001", "tenant": "no-such-tenant"}',
        '{"patient": "3000002", "resources": ["Patient", "Medication"]}',
        'this is not json',
        '{"patient": "3000003", "colour": "blue"}',
        '{"patient": "3000004", "since": "yesterday"}',
        '{"job_id": "bad-job", "tenant": "%s", "patients": []}' % SANDBOX,
        '{"nothing": 1}',
        '{"patient": 12345}',
        '[1, 2, 3]',
    ]
    lines = []
    for i in range(1, n + 1):
        if i % 997 == 0:
            lines.append(("bad", bad_kinds[(i // 997) % len(bad_kinds)]))
        elif i % 1500 == 0:
            lines.append(("blank", ""))
        elif i % 2500 == 0:
            lines.append(("job", json.dumps({"job_id": "whole-%d" % i, "tenant": SANDBOX,
                                             "patients": ["20000001", "20000002"]})))
        elif i % 3333 == 0:
            lines.append(("patient", json.dumps({"patient": "4%07d" % 10})))  # a repeat
        else:
            d = {"patient": "4%07d" % i}
            if i % 3 == 0:
                d["tenant"] = "hospital-b"
            if i % 4 == 0:
                d["resources"] = ["Observation", "Patient"]
            if i % 7 == 0:
                d["since"] = "2026-11-01T00:00:00Z"
            lines.append(("patient", json.dumps(d)))
    return lines


def scenario_enqueue_ndjson(check):
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 30},
                       {"id": "hospital-b", "patients": 40}])
    try:
        lines = make_lines(10000)
        path = os.path.join(env.dir, "patients.ndjson")
        with open(path, "w") as f:
            f.write("".join(line + "\n" for _, line in lines))
        want, bad = expected_jobs(lines, SANDBOX, 50, "nightly", None, TYPE_ORDER)
        r = fhirx("enqueue", "--config", env.config, "--ndjson", path, "--tenant", SANDBOX,
                  "--batch", "50", "--job-id-prefix", "nightly")
        reported = {int(m) for m in re.findall(r"^line (\d+): ", r.stderr, re.M)}
        check(r.returncode == 1, "bad lines make the exit status 1")
        check(reported == bad and len(bad) == 10,
              "every bad line is reported by its number: %s" % sorted(reported))
        check(r.seconds < 30, "10,000 lines enqueued in %.1f s" % r.seconds)
        patients = sum(len(j.get("patients", [])) for j in want)
        m = re.search(r"enqueued (\d+) jobs \((\d+) patients, (\d+) tenants\)", r.stdout)
        check(m and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (len(want), patients, 2),
              "the summary: %d jobs, %d patients, 2 tenants" % (len(want), patients))
        got = {m.key: m.json() for m in env.read("fhirx.jobs", len(want))}
        check(len(env.read("fhirx.jobs")) == len(want), "one message per job")
        check(got == {j["job_id"]: j for j in want},
              "fhirx.jobs holds exactly the expected %d jobs (ids, patients, settings)" % len(want))
        check(all(len(j.get("patients", [])) <= 50 for j in want), "at most --batch 50 patients a job")

        dry = fhirx("enqueue", "--config", env.config, "--ndjson", "-", "--tenant", SANDBOX,
                    "--batch", "50", "--job-id-prefix", "nightly", "--dry-run",
                    stdin="".join(line + "\n" for _, line in lines))
        printed = [json.loads(x) for x in dry.stdout.splitlines()]
        check(dry.returncode == 1 and printed == want,
              "--dry-run from stdin prints the same jobs with the same ids (a re-run keeps them)")
        check(len(env.read("fhirx.jobs")) == len(want), "--dry-run produced nothing")

        strict = fhirx("enqueue", "--config", env.config, "--ndjson", path, "--tenant", SANDBOX,
                       "--job-id-prefix", "strict", "--strict")
        check(strict.returncode == 1 and "nothing was produced" in strict.stderr and
              len(env.read("fhirx.jobs")) == len(want), "--strict: one bad line, nothing produced")

        csv = "MRN,tenant,resources\n20000001,,Patient;Observation\n20000002,hospital-b,\n" \
              "\"20000003\",,Patient|Condition\nnot valid!,,\n20000004,,Patient;Observation\n"
        r = fhirx("enqueue", "--config", env.config, "--csv", "-", "--column", "mrn", "--tenant",
                  SANDBOX, "--job-id-prefix", "csv", stdin=csv)
        check(r.returncode == 1 and re.findall(r"^line (\d+): ", r.stderr, re.M) == ["5"] and
              "enqueued 3 jobs (4 patients, 2 tenants)" in r.stdout,
              "CSV with a header row: per-line tenant and resources; line 5 rejected")
        csv_jobs = {m.key: m.json() for m in env.read("fhirx.jobs") if m.key.startswith("csv-")}
        check(csv_jobs["csv-000001"]["patients"] == ["20000001", "20000004"] and
              csv_jobs["csv-000001"]["resources"] == ["Observation", "Patient"],
              "patients with the same settings share a job")

        r = fhirx("enqueue", "--config", env.config, "--tenant", SANDBOX, "20000005", "20000006",
                  "--job-id", "args-1")
        check(r.returncode == 0 and "enqueued 1 job (2 patients, 1 tenant) on fhirx.jobs: args-1"
              in r.stdout, "patients as arguments, one job with --job-id")
        for argv, what in ((["enqueue"], "no config"),
                           (["enqueue", "--config", env.config, "--csv", "a", "--ndjson", "b"], "two sources"),
                           (["enqueue", "--config", env.config, "--patients", "1", "--batch", "0"], "batch 0"),
                           (["replay", "--config", env.config, "--since", "last tuesday"], "bad time"),
                           (["replay", "--config", env.config, "--error-class", "oops"], "bad class"),
                           (["replay", "--config", env.config, "--follow", "--dry-run"], "follow+dry")):
            r = fhirx(*argv)
            check(r.returncode == 2 and r.stderr.strip(), "usage error (%s): exit 2 with a reason" % what)
        for cmd in ("enqueue", "replay"):
            r = fhirx(cmd, "--help")
            check(r.returncode == 0 and r.stdout.startswith("usage: fhirx " + cmd), cmd + " --help")
    finally:
        env.close()


# ---- enqueue_bulk ----------------------------------------------------------------------

SANDBOX_GROUP = "11ec-d16a-c763b73e-98e8-a31715e6a2bf"


def scenario_enqueue_bulk(check):
    sys.path.insert(0, os.path.join(HERE, "..", "schemas"))
    import fhirx_schemas
    schemas = fhirx_schemas.Schemas(fhirx_schemas.default_dir())
    env = Env(tenants=[{"id": SANDBOX, "sandbox": True, "patients": 10}])
    try:
        args = ("enqueue", "--config", env.config, "--group", SANDBOX_GROUP,
                "--resources", "Patient,Observation,Condition", "--since", "2026-11-01T00:00:00Z",
                "--type-filter", "Observation?category=laboratory",
                "--type-filter", "Condition?clinical-status=active%2Crecurrence",
                "--follow-references")
        r = fhirx(*args)  # --tenant left out: the config's only tenant
        m = re.search(r"^enqueued 1 job \(bulk export of Group %s, 1 tenant\) on fhirx.jobs: "
                      r"(job-[0-9a-f]{16})$" % re.escape(SANDBOX_GROUP), r.stdout, re.M)
        check(r.returncode == 0 and m, "fhirx enqueue --group enqueued one bulk job and named it")
        job_id = m.group(1) if m else None
        msgs = env.read("fhirx.jobs", 1)
        want = {"job_id": job_id, "kind": "bulk", "tenant": SANDBOX, "group": SANDBOX_GROUP,
                "resources": ["Condition", "Observation", "Patient"],
                "since": "2026-11-01T00:00:00Z",
                "type_filter": ["Observation?category=laboratory",
                                "Condition?clinical-status=active%2Crecurrence"],
                "follow_references": True}
        check(len(msgs) == 1 and msgs[0].key == job_id and msgs[0].json() == want,
              "fhirx.jobs holds the bulk job, keyed by its id: %s" % (msgs[0].value if msgs else None))
        check(msgs and not schemas.errors("job", msgs[0].json()), "it is valid against job.schema.json")
        # Read back by the workers' parser (enqueue's whole-job NDJSON line goes through
        # fx_job_parse) and written out again: the same job.
        back = fhirx("enqueue", "--config", env.config, "--ndjson", "-", "--dry-run",
                     stdin=(msgs[0].value.decode() + "\n") if msgs else "")
        check(back.returncode == 0 and [json.loads(x) for x in back.stdout.splitlines()] == [want] and
              "dry run: 1 job (1 bulk export, 1 tenant): %s" % job_id in back.stderr,
              "the workers' parser reads it back unchanged")

        again = fhirx(*(args + ("--dry-run",)))
        check(again.returncode == 0 and [json.loads(x) for x in again.stdout.splitlines()] == [want],
              "the same request again: the same job and id (--dry-run)")
        named = fhirx("enqueue", "--config", env.config, "--tenant", SANDBOX, "--group", "g-2",
                      "--job-id", "cohort-2026-11-30", "--dry-run")
        check(named.returncode == 0 and json.loads(named.stdout) ==
              {"job_id": "cohort-2026-11-30", "kind": "bulk", "tenant": SANDBOX, "group": "g-2"},
              "--job-id names it; without --resources it names none (the workers take the tenant's types)")

        # Cerner's Group $export rules (group-export.md), refused at enqueue, naming the option.
        for extra, needle in ((["--resources", "Patient,Binary"],
                               "--resources: the Group $export of profile cerner does not export Binary"),
                              (["--resources", "Practitioner"],
                               "exports Practitioner only together with a patient type"),
                              (["--resources", "Patient,Coverage", "--since", "2026-11-01"],
                               "--since: resources names Coverage, which the Group $export of profile "
                               "cerner does not export"),
                              (["--type-filter", "Observation?code=a,b"], "percent-encode it as %2C"),
                              (["--resources", "Patient", "--type-filter", "Observation?category=laboratory"],
                               "Observation is not among the job's resources"),
                              (["--type-filter", "Patient?gender=male"],
                               "--type-filter 'Patient?gender=male': profile cerner: the server takes "
                               "no _typeFilter on Patient"),
                              (["--type-filter", "Observation?patient=12724065"],
                               "parameter 'patient' is refused in a _typeFilter"),
                              (["--type-filter", "Observation?_lastUpdated=ge2026-01-01"],
                               "parameter '_lastUpdated' is refused in a _typeFilter"),
                              (["--type-filter", "Observation?category=laboratory",
                                "--type-filter", "Observation?category=vital-signs"],
                               "a second filter for Observation"),
                              (["--since", "yesterday"], "--since: ")):
            r = fhirx("enqueue", "--config", env.config, "--group", SANDBOX_GROUP, *extra)
            check(r.returncode == 1 and needle in r.stderr and "nothing was produced" in r.stderr,
                  "rejected, naming the option: %s" % " ".join(extra))
        r = fhirx("enqueue", "--config", env.config, "--group", "no/such/group")
        check(r.returncode == 1 and "--group: a Group id must be" in r.stderr, "a bad Group id")
        check(len(env.read("fhirx.jobs")) == 1, "nothing else was produced")
        for argv, what in ((["--group", "g", "--patients", "1"], "--group with --patients"),
                           (["--group", "g", "12724065"], "--group with patient arguments"),
                           (["--group", "g", "--ndjson", "-"], "--group with --ndjson"),
                           (["--group", "g", "--batch", "5"], "--group with --batch"),
                           (["--patients", "1", "--type-filter", "Goal?x=1"], "--type-filter without --group")):
            r = fhirx("enqueue", "--config", env.config, *argv)
            check(r.returncode == 2 and r.stderr.strip(), "usage error (%s): exit 2 with a reason" % what)
        r = fhirx("enqueue", "--help")
        check(r.returncode == 0 and "--group ID" in r.stdout and "--type-filter" in r.stdout,
              "enqueue --help documents --group and --type-filter")
    finally:
        env.close()


SCENARIOS = {"replay_scope": scenario_replay_scope, "replay_parking": scenario_replay_parking,
             "replay_kill": scenario_replay_kill, "replay_kill_many": scenario_replay_kill_many,
             "enqueue_ndjson": scenario_enqueue_ndjson, "enqueue_bulk": scenario_enqueue_bulk}

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.time()
    SCENARIOS[name](Check(name))
    log("scenario %s passed in %.1f s" % (name, time.time() - started))
