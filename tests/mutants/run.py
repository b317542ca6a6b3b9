#!/usr/bin/python3
"""The mutation harness: does the suite catch the bugs that matter?

Reads tests/mutants/mutants.toml (a curated list of plausible bugs, each an
exact snippet of a source file and its replacement), keeps ONE scratch copy of
the tree with its own persistent build directory (build-mutants/ by default),
and for each mutant: applies it, rebuilds incrementally, runs the tests the
list says must catch it, records killed / survived / did not build, and puts
the original back. Prints a table; exits 0 only when every mutant was killed.

    tests/mutants/run.py                  every mutant
    tests/mutants/run.py --only a,b       a subset (also MUTANTS=a,b in the environment)
    tests/mutants/run.py --list           what is in the list
    tests/mutants/run.py --check [--build-dir build]
                                          only check that every snippet occurs exactly once
                                          (and, with a build dir, that every test exists)

Before any mutant, the unmutated scratch tree is built and the selected tests
are run once: a mutant "killed" by a test that fails anyway proves nothing.
See docs/testing.md for what a survivor means and what to do about it.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIST = ROOT / "tests" / "mutants" / "mutants.toml"
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Tests whose names are not valid ctest names would never match: keep them simple.
TEST_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ListError(Exception):
    """The mutant list is malformed or out of sync with the code."""


@dataclass
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    why: str
    tests: list
    expect: str = ""
    # results
    status: str = ""          # killed | survived | no-build | no-tests
    killers: list = field(default_factory=list)
    ran: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    build_s: float = 0.0
    test_s: float = 0.0


def load(path=LIST):
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ListError("%s: %s" % (path, e))
    allowed = {"id", "file", "original", "replacement", "why", "tests", "expect"}
    mutants, seen = [], set()
    for i, m in enumerate(doc.get("mutant", [])):
        where = "%s: mutant #%d (%s)" % (path.name, i + 1, m.get("id", "no id"))
        unknown = set(m) - allowed
        if unknown:
            raise ListError("%s: unknown keys %s; allowed: %s" % (where, sorted(unknown), sorted(allowed)))
        for k in ("id", "file", "original", "replacement", "why", "tests"):
            if k not in m:
                raise ListError("%s: '%s' is missing" % (where, k))
        if not ID_RE.match(m["id"]) or m["id"] in seen:
            raise ListError("%s: id must be unique and [a-z0-9-]" % where)
        seen.add(m["id"])
        if not m["original"] or m["original"] == m["replacement"]:
            raise ListError("%s: original must be non-empty and differ from replacement" % where)
        if not isinstance(m["tests"], list) or not m["tests"] or \
                not all(isinstance(t, str) and TEST_RE.match(t) for t in m["tests"]):
            raise ListError("%s: tests must be a non-empty list of ctest names" % where)
        if not m["why"].strip():
            raise ListError("%s: say why the bug is plausible" % where)
        mutants.append(Mutant(**m))
    if not mutants:
        raise ListError("%s: no [[mutant]] entries" % path)
    return mutants


def check_snippets(root, mutants, listname="tests/mutants/mutants.toml"):
    """Every original must occur exactly once in its file (in root)."""
    problems = []
    for m in mutants:
        p = root / m.file
        if not p.is_file():
            problems.append("%s: %s does not exist" % (m.id, m.file))
            continue
        n = p.read_text().count(m.original)
        if n != 1:
            problems.append("%s: the original snippet occurs %d times in %s (must be exactly once):\n"
                            "    %s" % (m.id, n, m.file, m.original.replace("\n", "\n    ")))
    if problems:
        raise ListError("%s is out of sync with the code; update the snippet (or the mutant) to "
                        "what the code says now:\n  %s" % (listname, "\n  ".join(problems)))


def ctest_names(build):
    """Every test ctest knows in build."""
    out = subprocess.run(["ctest", "-N"], cwd=build, capture_output=True, text=True)
    if out.returncode != 0:
        raise ListError("ctest -N failed in %s:\n%s" % (build, out.stderr))
    return set(re.findall(r"^\s*Test\s+#\d+: (\S+)$", out.stdout, re.M))


def check_tests(mutants, names, listname="tests/mutants/mutants.toml"):
    """Named tests must exist; a mutant with `expect` may name one that is still to come."""
    problems = []
    for m in mutants:
        m.missing = [t for t in m.tests if t not in names]
        if m.missing and not m.expect:
            problems.append("%s: no test named %s" % (m.id, ", ".join(m.missing)))
        elif len(m.missing) == len(m.tests):
            problems.append("%s: none of its tests exists (%s)" % (m.id, ", ".join(m.tests)))
    if problems:
        raise ListError("%s names tests ctest does not know:\n  %s" % (listname, "\n  ".join(problems)))


# ---- the scratch copy --------------------------------------------------------------

def tree_files(root):
    """The files of the working tree as git sees them: tracked and new, not ignored
    (so build directories and this harness's own scratch copy are left out). Outside
    a git checkout: every file but build*/, .git and caches."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True)
    if out.returncode == 0:
        return sorted({f for f in out.stdout.decode().split("\0") if f and (root / f).is_file()})
    files = []
    for dirpath, dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if not d.startswith("build") and d not in (".git", ".cache")]
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return sorted(files)


def sync(root, src):
    """Makes src a copy of root's working tree. Only files whose content differs are
    written (with a fresh mtime), so the scratch build stays incremental, and a file
    left mutated by an interrupted run is put back."""
    wanted = tree_files(root)
    changed = 0
    for rel in wanted:
        a, b = root / rel, src / rel
        data = a.read_bytes()
        if b.is_file() and b.read_bytes() == data:
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        b.write_bytes(data)
        shutil.copymode(a, b)
        changed += 1
    keep = set(wanted)
    for dirpath, _, files in os.walk(src):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            if rel not in keep:
                os.unlink(os.path.join(dirpath, name))
                changed += 1
    return changed


def run_logged(cmd, log, cwd=None):
    with open(log, "w") as f:
        f.write("$ %s\n" % " ".join(cmd))
        f.flush()
        return subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode


def tail(path, n=25):
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join("    " + l for l in lines[-n:])


def build(bdir, jobs, log):
    return run_logged(["cmake", "--build", str(bdir), "-j%d" % jobs], log) == 0


def run_tests(bdir, tests, log, timeout, stop_on_failure):
    """Runs the named tests; returns (passed, failed test names)."""
    failed_log = bdir / "Testing" / "Temporary" / "LastTestsFailed.log"
    if failed_log.exists():
        failed_log.unlink()
    cmd = ["ctest", "-R", "^(%s)$" % "|".join(re.escape(t) for t in tests),
           "--output-on-failure", "--timeout", str(timeout), "--no-tests=error"]
    if stop_on_failure:
        cmd.append("--stop-on-failure")
    rc = run_logged(cmd, log, cwd=bdir)
    failed = []
    if failed_log.exists():
        failed = [l.split(":", 1)[1] for l in failed_log.read_text().split() if ":" in l]
    if rc != 0 and not failed:
        failed = ["ctest exited %d" % rc]
    return rc == 0, failed


# ---- one mutant --------------------------------------------------------------------

def try_mutant(m, src, bdir, logs, args):
    path = src / m.file
    pristine = path.read_text()
    if pristine.count(m.original) != 1:  # checked up front; a race with an edit lands here
        raise ListError("%s: snippet not found exactly once in the scratch copy of %s" % (m.id, m.file))
    path.write_text(pristine.replace(m.original, m.replacement, 1))
    try:
        t0 = time.monotonic()
        ok = build(bdir, args.jobs, logs / ("%s.build.log" % m.id))
        m.build_s = time.monotonic() - t0
        if not ok:
            m.status = "no-build"
            return
        m.ran = [t for t in m.tests if t not in m.missing]
        t0 = time.monotonic()
        passed, failed = run_tests(bdir, m.ran, logs / ("%s.test.log" % m.id), args.timeout,
                                   stop_on_failure=True)
        m.test_s = time.monotonic() - t0
        m.status = "survived" if passed else "killed"
        m.killers = failed
    finally:
        path.write_text(pristine)


# ---- report --------------------------------------------------------------------------

def verdict(m):
    if m.status == "killed":
        return "killed" + (" (its `expect` is obsolete: remove it)" if m.expect else "")
    if m.status == "survived":
        return "survived (expected, see below)" if m.expect else "SURVIVED"
    if m.status == "no-build":
        return "DID NOT BUILD"
    return m.status


def table(mutants):
    rows = [("mutant", "file", "result", "failed tests (of those run)", "build s", "tests s")]
    for m in mutants:
        failed = ", ".join(m.killers) if m.status == "killed" else ""
        ran = ", ".join(m.ran) + ("; missing: " + ", ".join(m.missing) if m.missing else "")
        rows.append((m.id, m.file, verdict(m), failed or ("ran " + ran if m.ran else ""),
                     "%.0f" % m.build_s, "%.0f" % m.test_s))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    lines = [fmt(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in rows[1:]]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=os.environ.get("MUTANTS", ""),
                    help="comma-separated mutant ids (default: $MUTANTS, else all)")
    ap.add_argument("--mutants", default=str(LIST), help="the list (default tests/mutants/mutants.toml)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check the list against the code (and --build-dir's tests)")
    ap.add_argument("--build-dir", help="with --check: a configured build whose tests to check")
    ap.add_argument("--scratch", default=str(ROOT / "build-mutants"),
                    help="the scratch copy and its build (default build-mutants/)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=int, default=600,
                    help="ctest timeout for tests without their own (s)")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not run the selected tests on the unmutated tree first")
    ap.add_argument("--allow-expected", action="store_true",
                    help="exit 0 when the only survivors are mutants with an `expect` note")
    args = ap.parse_args()

    try:
        mutants = load(Path(args.mutants))
        if args.only.strip():
            want = [s.strip() for s in args.only.split(",") if s.strip()]
            known = {m.id for m in mutants}
            bad = [w for w in want if w not in known]
            if bad:
                raise ListError("unknown mutant ids %s; --list shows them" % ", ".join(bad))
            mutants = [m for m in mutants if m.id in want]
        if args.list:
            for m in mutants:
                print("%-32s %-20s %s%s" % (m.id, m.file, m.why,
                                            "\n%-32s %-20s expect: %s" % ("", "", m.expect) if m.expect else ""))
            return 0
        check_snippets(ROOT, mutants, args.mutants)
        if args.check:
            if args.build_dir:
                check_tests(mutants, ctest_names(Path(args.build_dir)), args.mutants)
            print("mutants: %d in the list, every snippet found exactly once%s" %
                  (len(mutants), ", every test exists" if args.build_dir else ""))
            return 0

        scratch = Path(args.scratch).resolve()
        src, bdir, logs = scratch / "src", scratch / "build", scratch / "logs"
        for d in (src, bdir, logs):
            d.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        n = sync(ROOT, src)
        print("mutants: scratch copy %s (%d files updated)" % (src, n), flush=True)
        if run_logged(["cmake", "-S", str(src), "-B", str(bdir)], logs / "configure.log") != 0:
            print("mutants: cmake failed:\n" + tail(logs / "configure.log"), file=sys.stderr)
            return 2
        t0 = time.monotonic()
        if not build(bdir, args.jobs, logs / "baseline.build.log"):
            print("mutants: the unmutated tree does not build:\n" + tail(logs / "baseline.build.log"),
                  file=sys.stderr)
            return 2
        print("mutants: baseline built in %.0f s" % (time.monotonic() - t0), flush=True)
        check_tests(mutants, ctest_names(bdir), args.mutants)
        if not args.skip_baseline:
            every = sorted({t for m in mutants for t in m.tests if t not in m.missing})
            t0 = time.monotonic()
            ok, failed = run_tests(bdir, every, logs / "baseline.test.log", args.timeout,
                                   stop_on_failure=False)
            if not ok:
                print("mutants: the unmutated tree already fails %s; fix that first (a mutant "
                      "'killed' by a failing test proves nothing). Log: %s\n%s"
                      % (", ".join(failed), logs / "baseline.test.log",
                         tail(logs / "baseline.test.log")), file=sys.stderr)
                return 2
            print("mutants: baseline passes %d tests in %.0f s" % (len(every), time.monotonic() - t0),
                  flush=True)

        for i, m in enumerate(mutants, 1):
            try_mutant(m, src, bdir, logs, args)
            print("mutants: [%d/%d] %-32s %s (build %.0f s, tests %.0f s)" %
                  (i, len(mutants), m.id, verdict(m), m.build_s, m.test_s), flush=True)
        # Leave the scratch build matching the tree, so the next run starts incremental.
        build(bdir, args.jobs, logs / "restore.build.log")
    except ListError as e:
        print("mutants: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mutants: interrupted; the next run puts the scratch copy back", file=sys.stderr)
        return 130

    print()
    print(table(mutants))
    print()
    survived = [m for m in mutants if m.status == "survived" and not m.expect]
    expected = [m for m in mutants if m.status == "survived" and m.expect]
    broken = [m for m in mutants if m.status == "no-build"]
    killed = [m for m in mutants if m.status == "killed"]
    print("mutants: %d killed, %d survived, %d survived as expected, %d did not build; %.0f s in all"
          % (len(killed), len(survived), len(expected), len(broken), time.monotonic() - started))
    for m in survived:
        print("  SURVIVED %s: %s\n    no test in [%s] failed: that bug would ship. See docs/testing.md."
              % (m.id, m.why, ", ".join(m.ran)))
    for m in expected:
        print("  survived %s (expected: %s)" % (m.id, m.expect))
    for m in broken:
        print("  DID NOT BUILD %s: fix its replacement. Log: %s" % (m.id, logs / ("%s.build.log" % m.id)))
    for m in killed:
        if m.expect:
            print("  killed %s although marked expected to survive: remove its `expect`" % m.id)
    if survived or broken or (expected and not args.allow_expected):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
