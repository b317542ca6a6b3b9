#!/usr/bin/python3
"""fhirx's client assertions checked by an independent OAuth token endpoint.

The endpoint here is written with PyJWT and python3-cryptography (Debian
packages), sharing no code with fhirx or its simulator. It is configured with
the JWKS `fhirx keys jwks` prints, and validates like a strict SMART Backend
Services server: RS384/ES384 only, kid in the JWKS, signature, iss = sub =
client_id, aud = its own URL, exp present and at most 5 minutes ahead, jti
never reused. The test runs `fhirx token` against it for both algorithms,
then checks that the bad cases are rejected: a key missing from the JWKS, a
wrong client_id, a wrong audience, a replayed assertion and a tampered one.

Usage: independent_oauth_test.py /path/to/fhirx
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt  # PyJWT

FHIRX = sys.argv[1]
CLIENT_ID = "independent-client"
SCOPE = "system/Patient.read system/Observation.read"


class TokenServer:
    """A strict token endpoint. `jwks`, `client_id`, `expected_aud` are mutable."""

    def __init__(self):
        self.jwks = {"keys": []}
        self.client_id = CLIENT_ID
        self.expected_aud = None  # defaults to our own token URL
        self.seen_jti = set()
        self.assertions = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                status, body = server.handle(self.headers.get("Content-Type", ""), form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/oauth2/token" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, content_type, form):
        def one(name):
            v = form.get(name)
            return v[0] if v else None

        if not content_type.startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "not a form"}
        if one("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if one("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return 400, {"error": "invalid_request", "error_description": "assertion type"}
        assertion = one("client_assertion")
        if not assertion:
            return 400, {"error": "invalid_request", "error_description": "no assertion"}
        with self.lock:
            self.assertions.append(assertion)
        ok, why = self.verify(assertion)
        if not ok:
            return 400, {"error": "invalid_client", "error_description": why}
        return 200, {"access_token": "independent-" + os.urandom(8).hex(), "token_type": "bearer",
                     "expires_in": 300, "scope": one("scope")}

    def verify(self, assertion):
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as e:
            return False, "malformed: %s" % e
        if header.get("alg") not in ("RS384", "ES384") or header.get("typ") != "JWT":
            return False, "bad alg/typ"
        match = [k for k in self.jwks["keys"] if k.get("kid") == header.get("kid")]
        if not match:
            return False, "unknown kid"
        key = jwt.PyJWK.from_dict(match[0]).key
        aud = self.expected_aud or self.url
        try:
            claims = jwt.decode(assertion, key=key, algorithms=[header["alg"]], audience=aud,
                                issuer=self.client_id,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.PyJWTError as e:
            return False, "rejected: %s" % e
        if claims["sub"] != claims["iss"]:
            return False, "sub != iss"
        if claims["exp"] > time.time() + 300:
            return False, "exp too far"
        with self.lock:
            if claims["jti"] in self.seen_jti:
                return False, "jti replayed"
            self.seen_jti.add(claims["jti"])
        return True, ""


def run(*args):
    return subprocess.run([FHIRX, *args], capture_output=True, text=True, timeout=60)


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)
    print("ok:", what)


def write_config(dir_, server, key_paths, client_id=CLIENT_ID):
    cfg = {
        "tenants": [{
            "id": "independent", "environment": "sandbox",
            "fhir_base": "http://127.0.0.1:9/r4/independent",
            "client_id": client_id, "token_endpoint": server.url,
            "scopes": SCOPE.split(),
        }],
        "keys": [{"path": p} for p in key_paths],
    }
    path = os.path.join(dir_, "fhirx.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def post_assertion(server, assertion):
    data = urllib.parse.urlencode({
        "grant_type": "client_credentials", "scope": SCOPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion}).encode()
    req = urllib.request.Request(server.url, data=data, headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main():
    server = TokenServer()
    with tempfile.TemporaryDirectory() as d:
        keys = {}
        for alg in ("ES384", "RS384"):
            keys[alg] = os.path.join(d, alg.lower() + ".pem")
            r = run("keys", "generate", "--alg", alg, "--bits", "2048", "--out", keys[alg])
            check(r.returncode == 0, "fhirx keys generate --alg " + alg)
        stray = os.path.join(d, "stray.pem")
        check(run("keys", "generate", "--alg", "ES384", "--out", stray).returncode == 0,
              "generate a key that is never published")

        # The server knows exactly what `fhirx keys jwks` prints.
        cfg = write_config(d, server, [keys["RS384"], keys["ES384"]])
        r = run("keys", "jwks", "--config", cfg)
        check(r.returncode == 0, "fhirx keys jwks")
        server.jwks = json.loads(r.stdout)
        check(len(server.jwks["keys"]) == 2, "JWKS holds both keys")

        for alg in ("ES384", "RS384"):
            # The last key listed signs.
            others = [p for a, p in keys.items() if a != alg]
            cfg = write_config(d, server, others + [keys[alg]])
            r = run("token", "--config", cfg)
            check(r.returncode == 0, "%s assertion accepted (stderr: %s)" % (alg, r.stderr.strip()))
            out = json.loads(r.stdout)
            check(out["scope"] == SCOPE and out["expires_in"] == 300, "%s grant printed" % alg)
            check("access_token" not in out, "token not printed without --show-token")
            a = server.assertions[-1]
            h = jwt.get_unverified_header(a)
            check(h["alg"] == alg and h["typ"] == "JWT", "%s header alg/typ" % alg)
            sig = jwt.utils.base64url_decode(a.split(".")[2].encode())
            check(len(sig) == (96 if alg == "ES384" else 256), "%s signature length" % alg)
            claims = jwt.decode(a, options={"verify_signature": False})
            check(claims["aud"] == server.url and claims["iss"] == claims["sub"] == CLIENT_ID,
                  "%s claims iss/sub/aud" % alg)
            check(0 < claims["exp"] - time.time() <= 300, "%s exp within 5 minutes" % alg)

            # Replaying the very same assertion is refused.
            status, body = post_assertion(server, a)
            check(status == 400 and body["error"] == "invalid_client" and "replayed" in
                  body["error_description"], "%s replayed assertion rejected" % alg)
            # So is one with a tampered claim (signature no longer matches).
            parts = a.split(".")
            forged = dict(claims, sub="someone-else", iss="someone-else", jti="fresh-jti-" + alg)
            fake = jwt.utils.base64url_encode(json.dumps(forged).encode()).decode()
            status, body = post_assertion(server, ".".join([parts[0], fake, parts[2]]))
            check(status == 400 and body["error"] == "invalid_client", "%s tampered assertion "
                  "rejected" % alg)

        # A signing key that is not in the published JWKS.
        cfg = write_config(d, server, [keys["ES384"], stray])
        r = run("token", "--config", cfg)
        check(r.returncode == 1 and "invalid_client" in r.stderr and "kid" in r.stderr,
              "unpublished key rejected and reported: " + r.stderr.strip()[:160])

        # A client_id the server does not know.
        cfg = write_config(d, server, [keys["ES384"]], client_id="wrong-client")
        r = run("token", "--config", cfg)
        check(r.returncode == 1 and "invalid_client" in r.stderr and "wrong-client" in r.stderr,
              "wrong client_id rejected and reported")

        # An audience that is not what the server expects.
        server.expected_aud = server.url + "/elsewhere"
        cfg = write_config(d, server, [keys["ES384"]])
        r = run("token", "--config", cfg)
        check(r.returncode == 1 and "invalid_client" in r.stderr, "wrong audience rejected")
        server.expected_aud = None

        # Secrets never reach the terminal or the logs.
        for text in (r.stdout, r.stderr):
            check(not any(a in text for a in server.assertions), "no assertion in fhirx output")
    server.httpd.shutdown()
    print("independent OAuth checks passed")


if __name__ == "__main__":
    main()
