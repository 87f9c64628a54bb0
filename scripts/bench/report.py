#!/usr/bin/env python3
"""The benchmark's statistics and report: scripts/bench.sh measures and writes times.tsv (scenario,
tool, round, seconds, ecr-build's summary) and a JSON of the run's facts; this prints the table and
writes results.md.

    report.py TIMES.tsv FACTS.json OUT.md            the whole report
    report.py TIMES.tsv FACTS.json OUT.md --platforms-only
    report.py TIMES.tsv FACTS.json OUT.md --cache-only
    report.py --median < numbers                     one median (bash asks for the login's)
"""

import argparse
import csv
import json
import statistics
import sys

# scenario, label, target ecr-build/shell, target ecr-build/bake, target seconds (None: none)
ROWS = [
    ("first", "first build (3 images)", 1.00, None, None),
    ("rerun", "re-run, nothing changed", 0.05, 0.05, None),
    ("one-changed", "one of three images changed, same host (warm build cache)", 0.50, None, None),
    ("one-changed-fresh", "one of three images changed, new host (CodeBuild's default)", 0.50, None, None),
    ("large-first", "large contexts, first build (2 images)", None, 0.80, None),
    ("large-rerun", "large contexts, re-run", 0.05, 0.05, None),
    ("large-one-changed", "large contexts, one image changed", None, 0.60, None),
    ("mono-first", "monorepo, first build ({monorepo} images, one context)", None, None, None),
    ("mono-rerun", "monorepo, nothing changed", 0.05, 0.05, 0.30),
    ("mono-one-changed", "monorepo, one service changed", None, None, None),
]

PLATFORM_ROWS = [
    ("platforms-one-run", "two platforms in one run", None),
    ("platforms-fan-out", "fanned out over two engines: both parts at once, then the final run", None),
    ("platforms-final", "the final run alone (finds both parts, puts the index)", 1.00),
]

# The fresh-host cache scenario: ecr-build (registry cache) against bake with the same registry
# cache, and against ecr-build with the inline cache only; the targets are ecr-build's ratios.
CACHE_TOOLS = [("ecr-build", "ecr-build (registry cache)"), ("bake-cache", "bake, registry cache"),
               ("ecr-build-inline", "ecr-build --cache inline")]
CACHE_TARGETS = {"bake-cache": 0.90, "ecr-build-inline": 0.25}


def read_times(path):
    """{(scenario, tool): [seconds, ...]} and the last round's ecr-build summaries."""
    times, summaries, last_round = {}, {}, 0
    with open(path, newline="") as file:
        rows = list(csv.reader(file, delimiter="\t"))
    for scenario, tool, round_, seconds, *summary in rows[1:]:
        times.setdefault((scenario, tool), []).append(float(seconds))
        last_round = max(last_round, int(round_))
        if tool == "ecr-build" and summary and summary[0]:
            summaries[(int(round_), scenario)] = summary[0]
    last = [f"{s}: {text}" for (r, s), text in summaries.items() if r == last_round]
    return times, "; ".join(last)


class Stats:
    def __init__(self, values):
        self.median = statistics.median(values)
        self.min = min(values)
        self.max = max(values)

    def range(self, dash="–"):
        return f"{self.median:.2f} ({self.min:.2f}{dash}{self.max:.2f})"


def yes(condition):
    return "yes" if condition else "no"


def scenario_rows(times, monorepo):
    """One row per scenario: label, the three tools' stats, both ratios, targets, met."""
    for scenario, label, shell_target, bake_target, seconds_target in ROWS:
        ours, shell, bake = (Stats(times[(scenario, tool)]) for tool in ("ecr-build", "shell", "bake"))
        vs_shell, vs_bake = ours.median / shell.median, ours.median / bake.median
        targets, met = [], []
        # Ratios are compared as printed, rounded to two decimals.
        if shell_target is not None:
            targets.append(f"shell ≤ {shell_target:.2f}")
            met.append(yes(round(vs_shell, 2) <= shell_target))
        if bake_target is not None:
            targets.append(f"bake ≤ {bake_target:.2f}")
            met.append(yes(round(vs_bake, 2) <= bake_target))
        if seconds_target is not None:
            targets.append(f"< {seconds_target:.2f} s")
            met.append(yes(ours.median < seconds_target))
        yield (label.format(monorepo=monorepo), ours, shell, bake, vs_shell, vs_bake,
               ", ".join(targets), ", ".join(met))


def platforms_table(times):
    lines = ["| multi-platform (linux/amd64 + linux/arm64 under QEMU) | ecr-build s (min–max) | target | met |",
             "| --- | --- | --- | --- |"]
    for scenario, label, target in PLATFORM_ROWS:
        stats = Stats(times[(scenario, "ecr-build")])
        target_text = f"< {target:.2f} s" if target is not None else ""
        met = yes(stats.median < target) if target is not None else "-"
        lines.append(f"| {label} | {stats.range()} | {target_text} | {met} |")
    return lines


def cache_table(times):
    """Fresh host, one source file changed, a multi-stage Dockerfile with an expensive dependency
    stage: each tool's seconds, and ecr-build's ratio to the others with its target (on the
    containerd image store; the classic store has the push-path table only)."""
    if ("cache-fresh-one-changed", "ecr-build") not in times:
        return push_path_table(times)
    ours = Stats(times[("cache-fresh-one-changed", "ecr-build")])
    lines = ["| fresh host, one source file changed, expensive dependency stage | s (min–max) | ecr-build / it | target | met |",
             "| --- | --- | --- | --- | --- |"]
    for tool, label in CACHE_TOOLS:
        stats = Stats(times[("cache-fresh-one-changed", tool)])
        target = CACHE_TARGETS.get(tool)
        ratio = ours.median / stats.median
        target_text = f"≤ {target:.2f}" if target is not None else "-"
        met = yes(round(ratio, 2) <= target) if target is not None else "-"
        lines.append(f"| {label} | {stats.range()} | {ratio:.2f} | {target_text} | {met} |")
    first = Stats(times[("cache-first", "ecr-build")])
    lines.append(f"| (ecr-build's first build of the app, for scale) | {first.range()} | | | |")
    return lines + [""] + push_path_table(times)


def push_path_table(times):
    """Who pushes: the engine after a load, or BuildKit's image exporter."""
    engine, buildkit = (Stats(times[("push-path", way)]) for way in ("engine-push", "buildkit-push"))
    return ["| who pushes (a new 64 MB layer, build and push) | s (min–max) |", "| --- | --- |",
            f"| the engine: buildx --load, then docker push (ecr-build's way) | {engine.range()} |",
            f"| BuildKit: buildx --output type=image,push=true | {buildkit.range()} |"]


def report(times, outcomes, facts):
    """The text table (stdout) and the Markdown report."""
    text = [f"{'scenario':<60} {'ecr-build s':>18} {'shell s':>18} {'bake s':>18} {'/shell':>6} {'/bake':>6}  target (met)"]
    md = ["| scenario | ecr-build s (min–max) | shell s (min–max) | bake s (min–max) | ecr-build / shell | ecr-build / bake | target | met |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, ours, shell, bake, vs_shell, vs_bake, targets, met in scenario_rows(times, facts["monorepo_size"]):
        text.append(f"{label:<60} {ours.range('-'):>18} {shell.range('-'):>18} {bake.range('-'):>18} "
                    f"{vs_shell:6.2f} {vs_bake:6.2f}  {f'{targets} ({met})' if targets else ''}")
        md.append(f"| {label} | {ours.range()} | {shell.range()} | {bake.range()} | {vs_shell:.2f} | "
                  f"{vs_bake:.2f} | {targets or '-'} | {met or '-'} |")
    large, hashing = facts["large_summary"], facts["hash_summary"]
    large_desc = f"{large['files']} files, {large['bytes'] // 1_000_000} MB, {large['sent_bytes'] // 1000} kB sent"
    hash_desc = f"{hashing['sent_files']} files, {hashing['sent_bytes'] // 1_000_000} MB sent"
    warm, cold = facts["hash_warm_mbs"], facts.get("hash_cold_mbs")
    plan_rss, dry_rss = facts["plan_rss"], facts["dry_rss"]
    hash_met, rss_met = yes(warm >= 300), yes(plan_rss < 100 and dry_rss < 100)
    cold_text = f"{cold} MB/s (page cache dropped before each run)" if cold else "not measured (page cache not dropped)"
    machine = facts["machine"]
    notes = [
        f"{facts['rounds']} rounds; median seconds of the whole build stage (login, builds, pushes, imagedefinitions.json), min–max in brackets.",
        f"Same engine (dockerd {facts['docker_version']}, BuildKit), registry (docker-registry 2.8, basic auth) and moto for all three; each tool pushes to its own repositories.",
        "BuildKit's cache is engine-wide, so before each tool's first builds the engine is reset (docker builder prune -af, every image but the base removed); re-run and one-changed follow that tool's own first build; one-changed on a new host resets the engine first.",
        "shell: scripts/bench/buildspec.sh (aws ecr get-login-password | docker login, docker build --network none one image after another with DOCKER_BUILDKIT=1, docker push, printf). "
        f"bake: scripts/bench/bake.sh (the same login, `docker buildx bake --push` of every image at once with buildx {facts['buildx_version']} on the engine's own BuildKit, printf). "
        f"ecr-build: `ecr-build build --registry`, default --jobs ({max(facts['nproc'], 4)}).",
        f"Large contexts: big has {large_desc}, big2 a quarter of that (node_modules, dist and .cache are .dockerignored); the change edits one sent source file of big.",
        f"Monorepo: {facts['monorepo_size']} services under one shared context, 940 sent files and 4,000 ignored; the change edits one file of one service; what BuildKit recorded that each image reads is that service's folder, so ecr-build rebuilds that service alone.",
        f"The shell's login alone (aws ecr get-login-password | docker login) takes {facts['shell_login_secs']} s (median): a floor under every shell run.",
        f"ecr-build's own summary in the last round: {outcomes}.",
    ]
    print()
    print("\n".join(text))
    print()
    print(f"context hashing, ecr-build plan over {hash_desc}: warm {warm:g} MB/s (target >= 300: {hash_met}); cold {cold_text}")
    print(f"peak RSS: ecr-build plan {plan_rss} MB; ecr-build build --dry-run (streams the tar) {dry_rss} MB in {facts['dry_secs']} s (target < 100 MB: {rss_met})")
    print(f"machine: {machine}")
    print()
    print("\n".join(notes))
    return [
        "## Benchmark: ecr-build vs. the buildspec shell and buildx bake",
        "",
        f"`{facts['invocation']}` on {facts['date']}. Machine: {machine}.",
        "",
        *md,
        "",
        "| measure | value | target | met |",
        "| --- | --- | --- | --- |",
        f"| context hashing, warm cache ({hash_desc}, `ecr-build plan`) | {warm:g} MB/s | ≥ 300 MB/s | {hash_met} |",
        f"| context hashing, cold cache | {f'{cold} MB/s' if cold else 'not measured'} | | |",
        f"| peak RSS, `ecr-build plan` of that context | {plan_rss} MB | < 100 MB | {yes(plan_rss < 100)} |",
        f"| peak RSS, `ecr-build build --dry-run` of that context ({facts['dry_secs']} s) | {dry_rss} MB | < 100 MB | {yes(dry_rss < 100)} |",
        "",
        *(f"- {note}" for note in notes),
        "",
        *platforms_table(times),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("times", nargs="?")
    parser.add_argument("facts", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--platforms-only", action="store_true")
    parser.add_argument("--cache-only", action="store_true")
    parser.add_argument("--median", action="store_true", help="the median of the numbers on stdin")
    args = parser.parse_args()
    if args.median:
        values = [float(line) for line in sys.stdin if line.strip()]
        print(f"{statistics.median(values):.3f}".rstrip("0").rstrip("."))
        return
    times, outcomes = read_times(args.times)
    with open(args.facts) as file:
        facts = json.load(file)
    if args.platforms_only:
        lines = ["## Benchmark: multi-platform images", "",
                 f"`{facts['invocation']}` on {facts['date']}. Machine: {facts['machine']}.", "",
                 *platforms_table(times)]
        print("\n".join(lines))
    elif args.cache_only:
        lines = ["## Benchmark: BuildKit's cache on a fresh host", "",
                 f"`{facts['invocation']}` on {facts['date']}. Machine: {facts['machine']}.", "",
                 *cache_table(times)]
        print("\n".join(lines))
    else:
        lines = report(times, outcomes, facts)
    with open(args.out, "w") as file:
        file.write("\n".join(lines) + "\n")
    print(f"==> wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
