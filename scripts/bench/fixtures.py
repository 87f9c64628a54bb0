#!/usr/bin/env python3
"""Fixtures for scripts/bench.sh: the apps that ecr-build and the buildspec shell both build.

    fixtures.py app DIR --nonce N           a 3-image app (web, api, worker), one context each
    fixtures.py change DIR IMAGE --nonce N  edit one source file of IMAGE (a new "commit" for it)
    fixtures.py large DIR --files N --mb M --nonce N
                                            one image whose context is mostly an ignored node_modules
    fixtures.py hashing DIR --mb M          one image with M MB of sent (not ignored) data
    fixtures.py monorepo DIR --images N --nonce N
                                            N services under one shared context (`context = "."`),
                                            each Dockerfile in services/NAME/ copying its own folder
    fixtures.py change-service DIR NAME --nonce N   edit one source file of a monorepo service
    fixtures.py change-large DIR --nonce N  edit one sent source file of a large context

Standard library only (Debian's python3), deterministic apart from the nonce: both tools get
byte-identical trees. Prints a one-line JSON summary of what was written (files, bytes, sent bytes).
"""

import argparse
import json
import os
import random
import sys

BASE_IMAGE = "ecr-build-test/busybox:base"

# How much each image's RUN steps do: rounds of busybox sha256sum over a generated file. Chosen
# so that one image takes a few seconds to build from scratch on a 2-core machine, like a small
# real service (dependencies, then a compile step), while nothing is pulled.
IMAGES = {
    # name: (dependency hashing rounds, build hashing rounds)
    "web": (14, 6),
    "api": (12, 5),
    "worker": (10, 4),
}

# The Dockerfile of every app image: the slow "dependencies" layer depends only on deps.lock, so a
# change under src/ re-runs only the cheap last steps (the usual layout of a real Dockerfile).
APP_DOCKERFILE = """\
FROM {base}
WORKDIR /app
COPY deps.lock ./
# "Install dependencies": generate ~15 MB and hash it {deps} times (CPU-bound, single thread).
RUN mkdir -p vendor && seq 1 2000000 > vendor/blob \\
 && i=0; while [ $i -lt {deps} ]; do sha256sum vendor/blob deps.lock >> vendor/checksums; i=$((i+1)); done
COPY assets ./assets
COPY src ./src
# "Compile": hash the sources together with the dependencies {build} times.
RUN i=0; while [ $i -lt {build} ]; do cat src/* vendor/blob | sha256sum >> build.sum; i=$((i+1)); done \\
 && sha256sum src/* assets/* > manifest
CMD ["/bin/sh", "/app/src/main.sh"]
"""

APP_DOCKERIGNORE = """\
# Never part of an image: logs, local caches, editor droppings.
**/*.log
.cache
tmp
*.swp
"""

LARGE_DOCKERFILE = """\
FROM {base}
WORKDIR /app
COPY package.json VERSION ./
RUN sha256sum package.json VERSION > deps.sum
COPY src ./src
RUN sha256sum src/* > manifest
CMD ["/bin/sh", "-c", "cat /app/VERSION"]
"""

# A node project: dependencies, build output and caches stay out of the context.
LARGE_DOCKERIGNORE = """\
node_modules
dist
.cache
coverage
**/*.log
"""

# One service of the monorepo: its own folder, and a short "compile".
MONOREPO_DOCKERFILE = """\
FROM {base}
WORKDIR /app
COPY services/{name} ./
RUN sha256sum src/* > manifest
CMD ["/bin/sh", "/app/src/main.sh"]
"""

MONOREPO_DOCKERIGNORE = """\
node_modules
**/*.log
.git
"""

HASHING_DOCKERFILE = """\
FROM {base}
COPY marker /marker
"""


class Writer:
    """Writes files and counts them; `sent` counts what .dockerignore does not exclude."""

    def __init__(self, root):
        self.root = root
        self.files = 0
        self.bytes = 0
        self.sent_files = 0
        self.sent_bytes = 0

    def write(self, rel, data, sent=True, mode=0o644):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        self.files += 1
        self.bytes += len(data)
        if sent:
            self.sent_files += 1
            self.sent_bytes += len(data)

    def summary(self, **extra):
        return dict(
            files=self.files,
            bytes=self.bytes,
            sent_files=self.sent_files,
            sent_bytes=self.sent_bytes,
            **extra,
        )


def text_blob(rng, size):
    """Source-code-like text (compressible, as real sources are)."""
    words = ["const", "let", "return", "function", "import", "export", "if", "else", "await",
             "value", "result", "config", "handler", "request", "response", "error", "=", "{", "}",
             "(", ")", ";", "0", "1", "true", "false", "null"]
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out)[:size]


def cmd_app(args):
    rng = random.Random(1)  # the same tree for every run; only the nonce differs
    total = Writer(args.dir)
    for name, (deps, build) in IMAGES.items():
        w = Writer(os.path.join(args.dir, name))
        w.write("Dockerfile", APP_DOCKERFILE.format(base=BASE_IMAGE, deps=deps, build=build))
        w.write(".dockerignore", APP_DOCKERIGNORE)
        # The nonce makes every round's layers new, so no round can mount blobs of an earlier one.
        w.write("deps.lock", f"# {name} dependencies, round {args.nonce}\n" + text_blob(rng, 4000))
        w.write("src/main.sh", f"#!/bin/sh\necho {name} is running\nexec sleep 3600\n", mode=0o755)
        for i in range(40):
            w.write(f"src/mod{i:02d}.js", text_blob(rng, rng.randint(500, 8000)))
        for i in range(8):
            w.write(f"assets/img{i}.bin", rng.randbytes(128 * 1024))
        # Excluded by .dockerignore: never sent, and never in the context digest.
        w.write("debug.log", text_blob(rng, 200_000), sent=False)
        for i in range(30):
            w.write(f".cache/c{i}", rng.randbytes(64 * 1024), sent=False)
        for k in ("files", "bytes", "sent_files", "sent_bytes"):
            setattr(total, k, getattr(total, k) + getattr(w, k))
    print(json.dumps(total.summary(images=list(IMAGES))))


def cmd_change(args):
    path = os.path.join(args.dir, args.image, "src", "main.sh")
    with open(path, "a") as f:
        f.write(f"# changed in commit {args.nonce}\n")
    print(json.dumps({"changed": path}))


def cmd_large(args):
    """A node-like project: a small sent part, and a node_modules tree with most of the files."""
    rng = random.Random(2)
    w = Writer(args.dir)
    w.write("Dockerfile", LARGE_DOCKERFILE.format(base=BASE_IMAGE))
    w.write(".dockerignore", LARGE_DOCKERIGNORE)
    w.write("package.json", '{"name": "big", "version": "1.0.0", "dependencies": {}}\n')
    w.write("VERSION", f"{args.nonce}\n")
    for i in range(200):
        w.write(f"src/f{i:03d}.js", text_blob(rng, rng.randint(1000, 20000)))
    sent_files = w.files
    ignored_files = max(args.files - sent_files - 300, 1000)
    # Sizes: mostly small files with a few large ones (minified bundles, native addons), scaled so
    # node_modules holds about --mb MB.
    budget = args.mb * 1_000_000 - w.bytes
    weights = [rng.paretovariate(1.3) for _ in range(ignored_files)]
    scale = budget / sum(weights)
    per_package = 20
    # A chunk of incompressible bytes that files slice from: fast to produce, and not a page-cache
    # trick (each file's pages are its own).
    pool = rng.randbytes(4 * 1024 * 1024)
    for i, weight in enumerate(weights):
        size = max(64, min(int(weight * scale), len(pool)))
        pkg = i // per_package
        start = (i * 7919) % (len(pool) - size + 1)
        w.write(f"node_modules/pkg{pkg:04d}/lib/file{i % per_package:02d}.js", pool[start:start + size],
                sent=False)
    for i in range(100):
        w.write(f"dist/bundle{i}.js", text_blob(rng, 20000), sent=False)
    for i in range(200):
        w.write(f".cache/babel/{i:03d}.json", text_blob(rng, 5000), sent=False)
    print(json.dumps(w.summary()))


def cmd_hashing(args):
    """args.mb MB of sent data in files of 1-6 MB (a few hundred files for 1 GB)."""
    rng = random.Random(3)
    w = Writer(args.dir)
    w.write("Dockerfile", HASHING_DOCKERFILE.format(base=BASE_IMAGE))
    w.write("marker", "hashing fixture\n")
    target = args.mb * 1_000_000
    i = 0
    while w.sent_bytes < target:
        size = min(rng.randint(1_000_000, 6_000_000), target - w.sent_bytes)
        # os.urandom, not a shared pool: every byte must really be read and hashed.
        w.write(f"data/d{i // 100:02d}/blob{i:04d}.bin", os.urandom(size))
        i += 1
    print(json.dumps(w.summary()))


def cmd_monorepo(args):
    """Services s01..sNN under services/, one context for all, and an ignored node_modules."""
    rng = random.Random(4)
    w = Writer(args.dir)
    w.write(".dockerignore", MONOREPO_DOCKERIGNORE)
    w.write("package.json", f'{{"name": "mono", "round": "{args.nonce}"}}\n')
    for n in range(1, args.images + 1):
        name = f"s{n:02d}"
        w.write(f"services/{name}/Dockerfile", MONOREPO_DOCKERFILE.format(base=BASE_IMAGE, name=name))
        w.write(f"services/{name}/src/main.sh",
                f"#!/bin/sh\n# round {args.nonce}\necho {name} is running\nexec sleep 3600\n", mode=0o755)
        for i in range(40):
            w.write(f"services/{name}/src/mod{i:02d}.js", text_blob(rng, rng.randint(500, 6000)))
    for i in range(100):
        w.write(f"libs/shared/l{i:03d}.js", text_blob(rng, 3000))
    for i in range(4000):
        w.write(f"node_modules/pkg{i // 20:03d}/f{i % 20:02d}.js", text_blob(rng, 400), sent=False)
    print(json.dumps(w.summary(images=[f"s{n:02d}" for n in range(1, args.images + 1)])))


def cmd_change_service(args):
    path = os.path.join(args.dir, "services", args.name, "src", "main.sh")
    with open(path, "a") as f:
        f.write(f"# changed in commit {args.nonce}\n")
    print(json.dumps({"changed": path}))


def cmd_change_large(args):
    path = os.path.join(args.dir, "src", "f000.js")
    with open(path, "a") as f:
        f.write(f"// changed in commit {args.nonce}\n")
    print(json.dumps({"changed": path}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("app")
    a.add_argument("dir")
    a.add_argument("--nonce", required=True)
    c = sub.add_parser("change")
    c.add_argument("dir")
    c.add_argument("image", choices=list(IMAGES))
    c.add_argument("--nonce", required=True)
    g = sub.add_parser("large")
    g.add_argument("dir")
    g.add_argument("--files", type=int, required=True)
    g.add_argument("--mb", type=int, required=True)
    g.add_argument("--nonce", required=True)
    h = sub.add_parser("hashing")
    h.add_argument("dir")
    h.add_argument("--mb", type=int, required=True)
    m = sub.add_parser("monorepo")
    m.add_argument("dir")
    m.add_argument("--images", type=int, required=True)
    m.add_argument("--nonce", required=True)
    cs = sub.add_parser("change-service")
    cs.add_argument("dir")
    cs.add_argument("name")
    cs.add_argument("--nonce", required=True)
    cl = sub.add_parser("change-large")
    cl.add_argument("dir")
    cl.add_argument("--nonce", required=True)
    args = p.parse_args()
    if args.cmd in ("app", "large", "hashing", "monorepo") and os.path.exists(args.dir) and os.listdir(args.dir):
        sys.exit(f"fixtures.py: {args.dir} exists and is not empty")
    {"app": cmd_app, "change": cmd_change, "large": cmd_large, "hashing": cmd_hashing,
     "monorepo": cmd_monorepo, "change-service": cmd_change_service,
     "change-large": cmd_change_large}[args.cmd](args)


if __name__ == "__main__":
    main()
