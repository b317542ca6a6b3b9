"""fhirx-canary from Python tests (standard library only).

The canary is a host that must never be contacted; cerner-sim's faults
foreign_next and foreign_references point at it (docs/simulator.md "Canary").

    import sys; sys.path.insert(0, "tests/support")
    from fx_canary import Canary

    with Canary() as canary:               # FHIRX_BUILD or ../../build
        sim_post(".../faults", {"target": "fhir", "path": "Observation",
                                "foreign_next": canary.url})
        ... run the extraction ...
        seen = canary.requests()           # {"requests", "with_authorization", "paths", "log"}
        assert seen["requests"] == 0, seen["paths"]

Run as a script (python3 fx_canary.py BUILD_DIR) it checks itself.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEFAULT_BUILD = os.environ.get(
    "FHIRX_BUILD", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../build"))


class Canary:
    """Starts fhirx-canary on 127.0.0.1 and a random port; url is its origin."""

    def __init__(self, build=None, ok=False, binary=None):
        self.binary = binary or os.environ.get("FX_CANARY_BIN") or os.path.join(
            build or DEFAULT_BUILD, "tests/sim/fhirx-canary")
        self.dir = tempfile.mkdtemp(prefix="fhirx-canary-")
        port_file = os.path.join(self.dir, "port")
        argv = [self.binary, "--port-file", port_file] + (["--ok"] if ok else [])
        self.proc = subprocess.Popen(argv)
        deadline = time.time() + 10
        while not (os.path.exists(port_file) and os.path.getsize(port_file) > 0):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("fhirx-canary did not start (%s)" % self.binary)
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read().strip())
        self.url = "http://127.0.0.1:%d" % self.port

    def _call(self, method):
        req = urllib.request.Request(self.url + "/_canary/requests", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def requests(self):
        """{"requests": N, "with_authorization": M, "paths": [...], "log": [...]}"""
        return self._call("GET")

    def reset(self):
        self._call("DELETE")

    def stop(self):
        """SIGTERM; returns the exit status (0 = clean)."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        elif self.proc:
            rc = self.proc.returncode
        self.proc = None
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
        return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.stop()


def _selftest(build):
    with Canary(build) as c:
        req = urllib.request.Request(c.url + "/r4/t/Practitioner/1",
                                     headers={"Authorization": "Bearer not-a-secret"})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("the canary answered 2xx without --ok")
        except urllib.error.HTTPError as e:
            assert e.code == 404, e.code
        seen = c.requests()
        assert seen["requests"] == 1 and seen["with_authorization"] == 1, seen
        assert seen["paths"] == ["/r4/t/Practitioner/1"], seen
        assert "not-a-secret" not in json.dumps(seen), seen
        c.reset()
        assert c.requests()["requests"] == 0
        assert c.stop() == 0
    print("fx_canary.py: ok")


if __name__ == "__main__":
    _selftest(sys.argv[1] if len(sys.argv) > 1 else None)
