"""The bare-work probe of the benchmarks (tests/bench/probe.c), driven from
Python: collect the pages fhirx fetched, then time their bare work.

collect_pages() asks the simulator for the same pages a job asks for (the
query profile's searches per patient and type, every next page, the Patient
read) with a token of its own, and writes them one JSON document per line.
run_probe() hands that file to fhirx-bench-probe, which parses each page,
dumps each resource compact and produces it with a delivery report on the
same embedded Kafka, and reports its CPU per resource."""
import concurrent.futures
import json
import os
import subprocess
import urllib.parse
import urllib.request

from e2e import BUILD, FHIRX

PROBE = os.path.join(BUILD, "tests/bench/fhirx-bench-probe")
HERE = os.path.dirname(os.path.abspath(__file__))
CERNER = os.path.join(HERE, "../../worker/profiles/cerner.json")


def profile_with_page_size(path, page_size):
    """The Cerner profile with every search's _count set to page_size."""
    with open(CERNER) as f:
        prof = json.load(f)
    prof["name"] = "cerner-%d-per-page" % page_size
    for rule in prof["types"].values():
        if rule.get("fetch") == "search":
            rule["count"] = page_size
    with open(path, "w") as f:
        json.dump(prof, f, indent=1)
    return path


def token(config, tenant):
    out = subprocess.run([FHIRX, "token", "--config", config, "--tenant", tenant,
                          "--show-token"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["access_token"]


def _get(url, tok):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + tok,
                                               "Accept": "application/fhir+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def _fetch_all(first, tok):
    pages, url = [], first
    while url:
        body = _get(url, tok)
        doc = json.loads(body)
        pages.append(json.dumps(doc, separators=(",", ":")))
        url = None
        if doc.get("resourceType") == "Bundle":
            for link in doc.get("link", []):
                if link.get("relation") == "next":
                    url = link["url"]
    return pages


def collect_pages(env, config, tenant, base, patients, profile_path, out_path):
    """Writes every page a job over patients would fetch (no references)."""
    with open(profile_path) as f:
        prof = json.load(f)
    tok = token(config, tenant)
    firsts = []
    for pid in patients:
        for typ, rule in sorted(prof["types"].items()):
            if rule.get("fetch") == "read":
                firsts.append("%s/%s/%s" % (base, typ, pid))
            elif rule.get("fetch") == "search":
                q = rule["search"].replace("{patient}", urllib.parse.quote(pid))
                if rule.get("count"):
                    q += "&_count=%d" % rule["count"]
                firsts.append("%s/%s?%s" % (base, typ, q))
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda u: _fetch_all(u, tok), firsts))
    n = 0
    with open(out_path, "w") as f:
        for pages in results:
            for p in pages:
                f.write(p + "\n")
                n += 1
    return n


def run_probe(bootstrap, path, mode, repeat, tenant="probe"):
    out = subprocess.run([PROBE, "--bootstrap", bootstrap, "--topic", "fhirx.probe", "--mode",
                          mode, "--repeat", str(repeat), "--tenant", tenant, path],
                         check=True, capture_output=True, text=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1])
