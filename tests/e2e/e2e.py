"""End-to-end test harness: the embedded Kafka, the Cerner simulator and
fhirx workers as real processes, read back with confluent-kafka.

Run with Debian's /usr/bin/python3 (python3-confluent-kafka). Binaries come
from the build directory passed as FHIRX_BUILD (ctest sets it)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, KafkaError, TopicPartition, Producer

BUILD = os.environ.get("FHIRX_BUILD", os.path.join(os.path.dirname(__file__), "../../build"))
FHIRX = os.path.join(BUILD, "worker/fhirx")
SIM = os.path.join(BUILD, "tests/sim/cerner-sim")
MOCK = os.path.join(BUILD, "tests/kafka/fhirx-kafka-mock")
SANDBOX = "ec2458f2-1e24-41c8-b71b-0e701af7583d"
# Sanitized builds run slower (ThreadSanitizer several times): `make tsan-test` sets
# FHIRX_TIME_FACTOR and every wait below stretches by it. A bound on waiting, never a
# measurement: no test asserts how long anything took.
TIME_FACTOR = float(os.environ.get("FHIRX_TIME_FACTOR", "1"))
TOPICS = ["fhirx.jobs", "fhirx.results", "fhirx.failures", "fhirx.dlq", "fhirx.status"]


def log(*args):
    print(*args, flush=True)


def wait_file(path, timeout=20):
    end = time.time() + timeout * TIME_FACTOR
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path) as f:
                return f.read().strip()
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + path)


class Env:
    """A temp dir with a key, a simulator, an embedded Kafka and a config."""

    def __init__(self, tenants=None, partitions=6, sim_extra=None, worker_extra=None,
                 scopes=None, tls=None):
        """tls: a directory holding ca.pem, good.pem and good.key (test_claims.make_pki):
        the simulator then serves HTTPS for localhost, fhir_base is https://localhost:PORT
        and http.ca_bundle names the CA (a tenant may then be production)."""
        self.dir = tempfile.mkdtemp(prefix="fhirx-e2e-")
        self.ssl = None
        self.procs = []
        self.workers = []
        self.tenants = tenants or [{"id": SANDBOX, "sandbox": True, "patients": 30}]
        self.partitions = partitions
        key = os.path.join(self.dir, "key.pem")
        subprocess.run([FHIRX, "keys", "generate", "--alg", "ES384", "--out", key], check=True,
                       capture_output=True)
        jwks = subprocess.run([FHIRX, "keys", "jwks", "--key", key], check=True,
                              capture_output=True, text=True).stdout
        with open(os.path.join(self.dir, "jwks.json"), "w") as f:
            f.write(jwks)
        self.scopes = scopes or ["system/%s.read" % t for t in (
            "Patient", "Observation", "Condition", "Encounter", "AllergyIntolerance",
            "Procedure", "Immunization", "MedicationRequest", "CarePlan", "CareTeam", "Goal",
            "Device", "Coverage", "DiagnosticReport", "DocumentReference", "ServiceRequest",
            "RelatedPerson", "Practitioner", "Organization", "Location", "Binary")]
        sim_cfg = {"seed": 7, "tenants": []}
        for t in self.tenants:
            st = dict(t)
            st.pop("fhirx", None)  # settings of the worker's tenant, not the simulator's
            st.update({"clients": [{"client_id": "fhirx-e2e",
                                    "jwks_file": os.path.join(self.dir, "jwks.json"),
                                    "scopes": self.scopes}]})
            if sim_extra:
                st.update(sim_extra)
            sim_cfg["tenants"].append(st)
        with open(os.path.join(self.dir, "sim.json"), "w") as f:
            json.dump(sim_cfg, f)
        tls_args = []
        if tls:
            import ssl
            self.ssl = ssl.create_default_context(cafile=os.path.join(tls, "ca.pem"))
            tls_args = ["--tls-cert", os.path.join(tls, "good.pem"),
                        "--tls-key", os.path.join(tls, "good.key")]
        self.start(SIM, "--config", os.path.join(self.dir, "sim.json"), "--port-file",
                   os.path.join(self.dir, "sim.port"), "--threads", "2", *tls_args, name="sim")
        self.start(MOCK, "--partitions", str(partitions), "--bootstrap-file",
                   os.path.join(self.dir, "kafka.bootstrap"), "--control-file",
                   os.path.join(self.dir, "kafka.control"), name="kafka")
        self.sim_url = ("https://localhost:" if tls else "http://127.0.0.1:") + \
            wait_file(os.path.join(self.dir, "sim.port"))
        self.bootstrap = wait_file(os.path.join(self.dir, "kafka.bootstrap"))
        self.control = wait_file(os.path.join(self.dir, "kafka.control"))
        self.config = os.path.join(self.dir, "fhirx.json")
        # Jobs of these tests may follow references: the tenants say so (their
        # tokens then ask for the reference types' scopes). A tenant's "fhirx"
        # entry adds or overrides settings of the worker's tenant.
        cfg = {
            "tenants": [dict({"id": t["id"], "environment": "sandbox",
                              "fhir_base": "%s/r4/%s" % (self.sim_url, t["id"]),
                              "client_id": "fhirx-e2e", "follow_references": True},
                             **t.get("fhirx", {})) for t in self.tenants],
            "keys": [{"path": "key.pem"}],
            "kafka": {"bootstrap.servers": self.bootstrap,
                      "consumer.session.timeout.ms": 6000,
                      "consumer.heartbeat.interval.ms": 500,
                      "consumer.fetch.wait.max.ms": 100,
                      "consumer.auto.commit.interval.ms": 500,
                      "producer.linger.ms": 2},
            "worker": {"threads": 2, "drain_timeout_ms": 10000},
            "log": {"level": "info"},
            # Several workers may share this config: each takes a free port.
            "admin": {"listen": "127.0.0.1:0"},
        }
        if tls:
            cfg["http"] = {"ca_bundle": os.path.join(tls, "ca.pem")}
        if worker_extra:
            for k, v in worker_extra.items():
                cfg.setdefault(k, {}).update(v)
        with open(self.config, "w") as f:
            json.dump(cfg, f, indent=1)
        LIVE_ENVS.append(self)

    def start(self, *argv, name):
        logf = open(os.path.join(self.dir, name + ".log"), "ab")
        p = subprocess.Popen(list(argv), stdout=logf, stderr=logf, cwd=self.dir)
        p.name = name
        self.procs.append(p)
        return p

    def start_worker(self, name="worker"):
        p = self.start(FHIRX, "worker", "--config", self.config, name=name)
        self.workers.append(p)
        return p

    def admin_url(self, worker, timeout=20):
        """The worker's admin endpoint, from its "admin endpoint listening" log line."""
        end = time.time() + timeout * TIME_FACTOR
        while time.time() < end:
            for line in self.logs(worker.name).splitlines():
                if '"admin endpoint listening"' in line:
                    return "http://127.0.0.1:%s" % json.loads(line)["port"]
            time.sleep(0.1)
        raise RuntimeError("%s never reported its admin port" % worker.name)

    def readyz(self, worker):
        """The worker's /readyz document (also when it answers 503)."""
        try:
            with urllib.request.urlopen(self.admin_url(worker) + "/readyz", timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def assigned(self, worker):
        """Partitions of the jobs topic the worker's consumers own now."""
        return sum(c["assigned_partitions"] for c in self.readyz(worker)["consumers"])

    def wait_assigned(self, workers, timeout=90):
        """Until the consumer group has settled on exactly these workers: each owns
        partitions of the jobs topic and together they own all of them (from each
        worker's /readyz), so a job enqueued now is consumed by one of them."""
        end = time.time() + timeout * TIME_FACTOR
        while True:
            got = [self.assigned(w) for w in workers]
            if all(got) and sum(got) == self.partitions:
                return got
            if time.time() > end:
                dump_worker_logs()
                raise AssertionError("the group did not settle on %s within %ds: %s" % (
                    [w.name for w in workers], timeout, got))
            time.sleep(0.2)

    def metric(self, worker, name, **labels):
        """One sample of the worker's /metrics (0 when absent), through the
        Prometheus text parser."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(self.admin_url(worker) + "/metrics", timeout=10) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0

    def wait_log(self, worker, msg, count=1, timeout=60):
        """Until the worker has logged msg (a JSON log line's "msg") count times;
        returns those lines, parsed."""
        end = time.time() + timeout * TIME_FACTOR
        while True:
            lines = [json.loads(l) for l in self.logs(worker.name).splitlines()
                     if l.startswith("{") and '"msg":%s' % json.dumps(msg) in l]
            if len(lines) >= count:
                return lines
            if time.time() > end:
                dump_worker_logs()
                raise AssertionError("%s did not log %r %d times within %ds (%d)" % (
                    worker.name, msg, count, timeout, len(lines)))
            time.sleep(0.1)

    def wait_statuses(self, job_ids, timeout=120):
        """Until each of job_ids has a status record; returns every status record."""
        want = set(job_ids)
        end = time.time() + timeout * TIME_FACTOR
        while True:
            msgs = read_topic(self.bootstrap, "fhirx.status")
            if want <= {m.key for m in msgs}:
                return msgs
            if time.time() > end:
                dump_worker_logs()
                raise AssertionError("no status record for %s after %ds" % (
                    sorted(want - {m.key for m in msgs})[:10], timeout))
            time.sleep(0.3)

    def stop(self, p, sig=signal.SIGTERM, timeout=60):
        p.send_signal(sig)
        try:
            return p.wait(timeout * TIME_FACTOR)
        except subprocess.TimeoutExpired:
            # A hang at exit: say where every thread is before failing.
            log("--- %s did not exit within %ds of signal %d" % (getattr(p, "name", p.pid),
                                                               timeout, sig))
            dump_worker_logs()
            if shutil.which("gdb"):
                bt = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-ex",
                                     "thread apply all bt 15"], capture_output=True, text=True,
                                    timeout=120)
                log("--- threads of %d:\n%s" % (p.pid, "\n".join(
                    l for l in bt.stdout.splitlines() if l.startswith(("#", "Thread")))))
            raise

    def control_post(self, path, body=None):
        req = urllib.request.Request(self.control + path, method="POST",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return r.status

    def sim_get(self, path):
        with urllib.request.urlopen(self.sim_url + path, context=self.ssl) as r:
            return json.load(r)

    def sim_post(self, path, body):
        req = urllib.request.Request(self.sim_url + path, method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.ssl) as r:
            return r.status

    def sim_delete(self, path):
        req = urllib.request.Request(self.sim_url + path, method="DELETE")
        with urllib.request.urlopen(req, context=self.ssl) as r:
            return r.status

    def producer(self):
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                         "message.max.bytes": 16 * 1024 * 1024})

    def enqueue(self, jobs, partition=None):
        """Produces job dicts (or raw bytes) to fhirx.jobs, keyed by job_id."""
        p = self.producer()
        errors = []
        for i, j in enumerate(jobs):
            if isinstance(j, (bytes, str)):
                value, key = (j if isinstance(j, bytes) else j.encode()), b"raw-%d" % i
            else:
                value, key = json.dumps(j).encode(), j.get("job_id", "x").encode()
            kw = {"partition": partition} if partition is not None else {}
            p.produce("fhirx.jobs", value=value, key=key,
                      on_delivery=lambda err, msg: err and errors.append(err), **kw)
            p.poll(0)
        assert p.flush(30) == 0 and not errors, errors

    def read(self, topic, min_count=0, timeout=60):
        """Every message of topic from the beginning up to its end (no group); waits
        until there are at least min_count, and fails loudly when there are not
        within timeout (a partial list would let a check pass on what was not read)."""
        end = time.time() + timeout * TIME_FACTOR
        while True:
            msgs = read_topic(self.bootstrap, topic)
            if len(msgs) >= min_count:
                return msgs
            if time.time() > end:
                dump_worker_logs()
                raise AssertionError("%s: %d messages after %ds, expected at least %d" %
                                     (topic, len(msgs), timeout, min_count))
            time.sleep(0.5)

    def wait_status(self, n, timeout=120):
        """Status records until n distinct jobs have one (a job redone after a
        rebalance or a crash has more than one)."""
        end = time.time() + timeout * TIME_FACTOR
        while True:
            msgs = read_topic(self.bootstrap, "fhirx.status")
            jobs = {m.key for m in msgs}
            if len(jobs) >= n:
                return msgs
            if time.time() > end:
                dump_worker_logs()
                raise AssertionError("only %d of %d jobs have a status record after %ds" %
                                     (len(jobs), n, timeout))
            time.sleep(0.5)

    def validate(self, expect_status, check_jobs=True):
        """Every message on the output topics checked against schemas/ by the
        independent validator (tests/schemas/validate_topics.py)."""
        here = os.path.dirname(os.path.abspath(__file__))
        argv = [sys.executable, os.path.join(here, "../schemas/validate_topics.py"),
                "--bootstrap", self.bootstrap, "--schemas", os.path.join(here, "../../schemas"),
                "--expect-status", str(expect_status), "--timeout", "60"]
        if check_jobs:
            argv.append("--check-jobs")
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180 * TIME_FACTOR)
        return r.returncode, (r.stdout + r.stderr).strip()

    def committed(self, group="fhirx-workers"):
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                      "enable.auto.commit": False})
        parts = [TopicPartition("fhirx.jobs", i) for i in range(self.partitions)]
        got = c.committed(parts, timeout=10)
        ends = {}
        for tp in parts:
            lo, hi = c.get_watermark_offsets(tp, timeout=10)
            ends[tp.partition] = hi
        c.close()
        return {tp.partition: tp.offset for tp in got}, ends

    def close(self, keep=False):
        if self in LIVE_ENVS:
            LIVE_ENVS.remove(self)
        # Workers first, so they drain while Kafka and the simulator still run.
        for p in self.workers + list(reversed(self.procs)):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                if p in self.workers:
                    try:
                        p.wait(60)
                    except subprocess.TimeoutExpired:
                        p.kill()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if keep or os.environ.get("FHIRX_E2E_KEEP"):
            log("kept " + self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self, name):
        with open(os.path.join(self.dir, name + ".log"), errors="replace") as f:
            return f.read()


class Msg:
    __slots__ = ("topic", "partition", "offset", "key", "value", "headers")

    def __init__(self, m):
        self.topic, self.partition, self.offset = m.topic(), m.partition(), m.offset()
        self.key = m.key().decode() if m.key() is not None else None
        self.value = m.value()
        self.headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}

    def json(self):
        return json.loads(self.value)


def read_topic(bootstrap, topic, stall_timeout=30):
    """Every message of topic, from the beginning of each partition up to its end
    (the high watermark when the read starts). A read that stops making progress
    for stall_timeout seconds before reaching every end raises: a partial list
    would let a check like "no dead letters" pass because nothing was read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                  "enable.partition.eof": False})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics:
            return []  # never produced to: nothing to read
        if md.topics[topic].error is not None:
            # The mock creates a topic on first use; one that does not exist yet is
            # reported as unknown, which also means nothing was produced to it.
            if md.topics[topic].error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                                 KafkaError._UNKNOWN_TOPIC):
                return []
            raise AssertionError("cannot read %s: %s" % (topic, md.topics[topic].error))
        parts, remaining = [], {}
        for pid in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, pid), timeout=10)
            if hi > lo:
                parts.append(TopicPartition(topic, pid, lo))
                remaining[pid] = hi
        out, errors = [], []
        if parts:
            c.assign(parts)
            last_progress = time.time()
            while remaining:
                if time.time() - last_progress > stall_timeout * TIME_FACTOR:
                    raise AssertionError(
                        "reading %s stalled: %d messages read, partitions %s not read to their "
                        "ends %s; errors: %s" % (topic, len(out), sorted(remaining),
                                                 remaining, errors[-3:]))
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    errors.append(str(m.error()))
                    continue
                last_progress = time.time()
                out.append(Msg(m))
                if m.offset() + 1 >= remaining.get(m.partition(), 0):
                    remaining.pop(m.partition(), None)
        return out
    finally:
        c.close()


LIVE_ENVS = []


def wait_until(what, pred, timeout=120, step=0.2):
    """Polls pred until it returns something true (returned), or fails loudly."""
    end = time.time() + timeout * TIME_FACTOR
    while True:
        v = pred()
        if v:
            return v
        if time.time() > end:
            dump_worker_logs()
            raise AssertionError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(step)


def dump_worker_logs():
    """What the workers said last, without the connection noise, for CI logs."""
    for env in LIVE_ENVS:
        for w in env.workers:
            lines = [l for l in env.logs(w.name).splitlines()
                     if "Connect to" not in l and "Disconnected" not in l]
            log("--- last lines of %s.log:\n%s" % (w.name, "\n".join(lines[-40:])))


class Check:
    def __init__(self, name):
        self.name = name

    def __call__(self, cond, what):
        if not cond:
            log("FAIL [%s]: %s" % (self.name, what))
            dump_worker_logs()
            raise SystemExit(1)
        log("ok [%s]: %s" % (self.name, what))
