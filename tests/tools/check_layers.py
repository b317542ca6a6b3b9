#!/usr/bin/python3
"""The worker's files must not call each other in a circle, and none may
grow past a size a reader can hold (issue 12's rules, kept by a test).

Reads the symbols of every object file of the fx_worker library with nm:
a file that uses a function another file defines depends on it. A cycle in
that graph (two or more files reaching each other) fails, naming the files
and the symbols that close it. Callbacks through function pointers are not
calls: they are how a lower layer reports upward.

  check_layers.py BUILD_DIR SOURCE_DIR [--max-lines 900]"""
import argparse
import collections
import os
import subprocess
import sys


def objects(build):
    root = os.path.join(build, "worker", "CMakeFiles", "fx_worker.dir")
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".c.o"):
                yield os.path.join(d, f)


def source_of(obj, build):
    rel = os.path.relpath(obj, os.path.join(build, "worker", "CMakeFiles", "fx_worker.dir"))
    return "worker/" + rel[:-2] if not rel.startswith("profile_builtin") else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("source")
    ap.add_argument("--max-lines", type=int, default=900)
    a = ap.parse_args()
    defined, used = {}, collections.defaultdict(set)
    objs = list(objects(a.build))
    if not objs:
        sys.exit("check_layers: no object files under %s: build first" % a.build)
    # Objects of files that no longer exist (a stale build tree) are not ours.
    objs = [o for o in objs if source_of(o, a.build) and
            os.path.exists(os.path.join(a.source, source_of(o, a.build)))]
    for o in objs:
        src = source_of(o, a.build)
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDBR":
                defined[parts[2]] = src
            elif len(parts) == 2 and parts[0] == "U":
                used[src].add(parts[1])
    graph = collections.defaultdict(dict)
    for src, syms in used.items():
        for s in syms:
            d = defined.get(s)
            if d and d != src:
                graph[src].setdefault(d, s)
    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(set(graph) | set(defined.values())):
        if v not in index:
            visit(v)
    failed = False
    for comp in sccs:
        failed = True
        print("check_layers: these files call each other in a circle:")
        for f in comp:
            for t, s in sorted(graph[f].items()):
                if t in comp:
                    print("  %s -> %s (%s)" % (f, t, s))
    for o in objs:
        src = source_of(o, a.build)
        if not src:
            continue
        with open(os.path.join(a.source, src)) as f:
            n = sum(1 for _ in f)
        if n > a.max_lines:
            failed = True
            print("check_layers: %s has %d lines (at most %d): split it by concept" %
                  (src, n, a.max_lines))
    if failed:
        sys.exit(1)
    print("check_layers: %d worker files, %d dependencies, no cycle, none over %d lines" %
          (len(defined and set(defined.values())), sum(len(v) for v in graph.values()),
           a.max_lines))


if __name__ == "__main__":
    main()
