#!/usr/bin/env python3
"""Compare dualfs with the native directory and other FUSE filesystems on the same disk.

Run as root on Debian 12: installs the peers with apt-get, builds dualfs and faultfs with
cargo, mounts every target on fresh directories, runs the workloads, and writes results.json,
results.md and SVG charts into the results directory. See BENCHMARKS.md for what is measured.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True

import harness  # noqa: E402 - after dont_write_bytecode, so no __pycache__ lands in the tree
import report  # noqa: E402
import targets as target_module  # noqa: E402
import workloads  # noqa: E402
from harness import BenchmarkError, Registry, log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

FULL = {
    # Runs of a workload on every target, in rounds; the report shows the median. Sequential
    # I/O is repeated because the virtual disk's speed varied several-fold between runs.
    "repeats": {"seqwrite": 3, "seqread": 3},
    "seq_size_mib": 1024,
    "rand_size_mib": 256,
    "rand_runtime_s": 20,
    "small_files": 10_000,
    "walk_files": 100_000,
    "crates": 5,
    "lag_files": 200,
    "lag_interval_s": 0.02,
    "lag_file_size": 16384,
    "latency_files": 200,
    "latency_interval_s": 0.01,
    # A case stops writing after this many seconds, because a slow remote in sync mode can
    # take half a second per file.
    "latency_max_s": 20,
    "inode_files": 1_000_000,
}
QUICK = {
    **FULL,
    "repeats": {},
    "seq_size_mib": 128,
    "rand_size_mib": 64,
    "rand_runtime_s": 3,
    "small_files": 1000,
    "walk_files": 10_000,
    "crates": 1,
    "lag_files": 50,
    "latency_files": 50,
    "latency_max_s": 10,
    "inode_files": 50_000,
}

SPECIAL_WORKLOADS = ["lag", "latency", "inodes"]
ALL_WORKLOADS = [*workloads.THROUGHPUT_WORKLOADS, *SPECIAL_WORKLOADS]

# Debian package for each program the benchmark runs.
PACKAGES = {
    "fio": "fio", "mergerfs": "mergerfs", "bindfs": "bindfs", "fuse-overlayfs": "fuse-overlayfs",
    "unionfs": "unionfs-fuse", "rclone": "rclone", "lsyncd": "lsyncd", "rsync": "rsync",
    "fusermount3": "fuse3", "find": "findutils", "tar": "tar", "gzip": "gzip",
    "lsblk": "util-linux",
}


class Context:
    """Shared state of one run: the registry of started daemons, paths and sizes."""

    def __init__(self, registry, workdir, config, dualfs_bin, faultfs_bin, dualfs_args):
        self.registry = registry
        self.workdir = workdir
        self.config = config
        self.dualfs_bin = dualfs_bin
        self.faultfs_bin = faultfs_bin
        self.dualfs_args = dualfs_args
        self.seq_file = None
        self.rand_file = None
        self.archives = []
        self.archive_entries = 0
        self.can_drop_caches = False


def parse_arguments():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and shorter runs for a smoke test of a few minutes")

    parser.add_argument("--targets", default=",".join(target_module.TARGET_ORDER),
                        help="comma-separated targets (default: all): "
                             + ", ".join(target_module.TARGET_ORDER))
    parser.add_argument("--workloads", default=",".join(ALL_WORKLOADS),
                        help="comma-separated workloads (default: all): " + ", ".join(ALL_WORKLOADS))

    parser.add_argument("--repeats", type=int, metavar="N",
                        help="runs of the sequential workloads per target, reported as the "
                             "median (default: 3, or 1 with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one size or count, for example --set inode_files=200000 "
                             "(keys: " + ", ".join(k for k in FULL if k != "repeats") + ")")

    parser.add_argument("--workdir-base", default="/var/tmp",
                        help="directory on the disk under test; a fresh temporary directory is "
                             "made inside it and deleted at the end (default: /var/tmp)")
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                        help="where results.json, results.md and the charts go")

    parser.add_argument("--dualfs-bin", help="use this dualfs binary instead of building one")
    parser.add_argument("--faultfs-bin", help="use this faultfs binary instead of building one")
    parser.add_argument("--dualfs-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every dualfs mount (repeat for several), "
                             "for example --dualfs-arg=--attr-ttl=10s")

    parser.add_argument("--no-install", action="store_true",
                        help="do not run apt-get for missing programs; fail instead")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the temporary directory (logs of every daemon) at the end")
    parser.add_argument("--report-from", metavar="RESULTS_JSON",
                        help="run nothing: rebuild results.md and the charts from a results.json "
                             "of an earlier run")
    return parser.parse_args()


def split_names(text, known, kind):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BenchmarkError(f"unknown {kind}(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(known)}")
    return names


PATH_OPTIONS = ("--dualfs-bin", "--faultfs-bin", "--results-dir", "--workdir-base",
                "--report-from")


def describe_command(argv):
    """Return the command line with path arguments replaced by placeholders, so that the
    results name no directory of the machine that produced them."""
    words = ["benches/compare/compare.py"]
    pending_placeholder = None
    for word in argv:
        if pending_placeholder:
            words.append(pending_placeholder)
            pending_placeholder = None
            continue
        option, equals, _value = word.partition("=")
        if option in PATH_OPTIONS:
            placeholder = option.lstrip("-").replace("-", "_").upper()
            if equals:
                words.append(f"{option}={placeholder}")
            else:
                words.append(option)
                pending_placeholder = placeholder
            continue
        words.append(shlex.quote(word))
    return " ".join(words)


def check_environment():
    if os.geteuid() != 0:
        raise BenchmarkError("run as root: the targets mount with mount(2) or fusermount3, and "
                             "cold-cache runs write /proc/sys/vm/drop_caches")
    if not os.path.exists("/dev/fuse"):
        raise BenchmarkError("/dev/fuse is missing; load the fuse module (modprobe fuse)")


def needed_programs(target_names, workload_names):
    programs = {"find", "tar", "gzip", "lsblk", "fusermount3"}
    if {"seqwrite", "seqread", "randread", "randwrite"} & set(workload_names):
        programs.add("fio")
    for target in target_names:
        binary = {"mergerfs": "mergerfs", "bindfs": "bindfs", "fuse-overlayfs": "fuse-overlayfs",
                  "unionfs-fuse": "unionfs", "rclone": "rclone"}.get(target)
        if binary:
            programs.add(binary)
    if "lag" in workload_names:
        programs.update({"lsyncd", "rsync"})
    return programs


def install_programs(programs, allow_install):
    missing = sorted(program for program in programs if shutil.which(program) is None)
    if not missing:
        return
    packages = sorted({PACKAGES[program] for program in missing})
    if not allow_install:
        raise BenchmarkError(f"missing programs {', '.join(missing)}; install the Debian "
                             f"packages {' '.join(packages)} or drop --no-install")
    log(f"installing {' '.join(packages)} with apt-get")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    harness.run(["apt-get", "update", "-q"], env=environment)
    harness.run(["apt-get", "install", "-y", "-q", *packages], env=environment)


def build_binaries(arguments):
    if arguments.dualfs_bin and arguments.faultfs_bin:
        return os.path.abspath(arguments.dualfs_bin), os.path.abspath(arguments.faultfs_bin)
    if shutil.which("cargo") is None:
        raise BenchmarkError("cargo not found: install a Rust toolchain (1.85 or newer) or pass "
                             "--dualfs-bin and --faultfs-bin")
    log("building dualfs and faultfs (cargo build --release)")
    harness.run(["cargo", "build", "--release", "--quiet", "-p", "dualfs", "-p", "faultfs"],
                cwd=REPO)
    release = os.path.join(REPO, "target", "release")
    return (os.path.abspath(arguments.dualfs_bin or os.path.join(release, "dualfs")),
            os.path.abspath(arguments.faultfs_bin or os.path.join(release, "faultfs")))


def version_line(command, marker=""):
    """Return the first output line of `command` that contains `marker`."""
    try:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    lines = [line.strip() for line in completed.stdout.splitlines() if marker in line]
    return lines[0] if lines else "not available"


def describe_machine(workdir):
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    os_name = platform.system()
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as release:
            for line in release:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    df = subprocess.run(["df", "--output=source,fstype", workdir], stdout=subprocess.PIPE,
                        text=True).stdout.splitlines()[-1].split()
    device, fstype = df[0], df[1]
    disk = f"{fstype} on {device}"
    if device.startswith("/dev/"):
        parent = subprocess.run(["lsblk", "-no", "PKNAME", device], stdout=subprocess.PIPE,
                                text=True).stdout.strip() or os.path.basename(device)
        lsblk = subprocess.run(["lsblk", "-d", "-no", "TYPE,ROTA,SIZE,MODEL", f"/dev/{parent}"],
                               stdout=subprocess.PIPE, text=True).stdout.split()
        if len(lsblk) >= 3:
            kind = "rotational" if lsblk[1] == "1" else "non-rotational"
            model = " ".join(lsblk[3:]) or "no model string"
            disk += f" ({lsblk[0]} {parent}, {lsblk[2]}, {kind}, {model})"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{total_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": os_name,
        "disk": disk,
    }


def describe_versions(arguments):
    if arguments.dualfs_bin:
        dualfs = f"{version_line([arguments.dualfs_bin, '--version'])} (--dualfs-bin)"
    else:
        revision = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True).stdout.strip()
        dualfs = f"built from git {revision or 'unknown'}"
    return {
        "dualfs-sync": dualfs,
        "dualfs-async": dualfs,
        "mergerfs": version_line(["mergerfs", "--version"], "mergerfs"),
        "bindfs": version_line(["bindfs", "--version"], "bindfs"),
        # fuse-overlayfs and unionfs also print the versions of fusermount3 and libfuse.
        "fuse-overlayfs": version_line(["fuse-overlayfs", "--version"], "fuse-overlayfs"),
        "unionfs-fuse": version_line(["unionfs", "--version"], "unionfs-fuse"),
        "rclone": version_line(["rclone", "version"], "rclone"),
        "lsyncd": version_line(["lsyncd", "--version"], "Version").replace("Version:", "lsyncd"),
        "rsync": version_line(["rsync", "--version"], "version"),
        "fio": version_line(["fio", "--version"], "fio"),
    }


def write_random_file(directory, name, size_mib):
    path = os.path.join(directory, name)
    log(f"writing a {size_mib} MiB file of random bytes")
    with open(path, "wb") as output:
        for _ in range(size_mib):
            output.write(os.urandom(1 << 20))
    return path


def prepare_corpus(context, workload_names):
    corpus = os.path.join(context.workdir, "corpus")
    os.makedirs(corpus)
    if "seqread" in workload_names:
        context.seq_file = write_random_file(corpus, "seq.bin", context.config["seq_size_mib"])
    if {"randread", "randwrite"} & set(workload_names):
        context.rand_file = write_random_file(corpus, "rand.bin", context.config["rand_size_mib"])
    if "unpack" in workload_names:
        cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        crates = sorted(glob.glob(os.path.join(cargo_home, "registry", "cache", "*", "*.crate")),
                        key=os.path.getsize, reverse=True)[: context.config["crates"]]
        if not crates:
            raise BenchmarkError(f"no .crate files in {cargo_home}/registry/cache; run a cargo "
                                 "build first or drop the unpack workload")
        for crate in crates:
            # Decompressed once here, so the unpack measures the filesystem and not gzip.
            archive = os.path.join(corpus, os.path.basename(crate)[: -len(".crate")] + ".tar")
            with open(archive, "wb") as output:
                subprocess.run(["gzip", "-dc", crate], stdout=output, check=True)
            listing = harness.run(["tar", "-tf", archive]).stdout
            context.archive_entries += listing.count("\n")
            context.archives.append(archive)
        context.config["crate_names"] = [os.path.basename(crate) for crate in crates]
        log(f"unpack corpus: {', '.join(context.config['crate_names'])} "
            f"({context.archive_entries} entries)")


def summarize(result):
    keys = ("mib_s", "both_seconds", "cold_mib_s", "warm_mib_s", "iops", "files_s",
            "cold_entries_s", "warm_entries_s", "seconds", "synced_seconds", "rss_peak_kib")
    if "error" in result:
        return "failed (error above)"
    return ", ".join(f"{key}={result[key]:.4g}" for key in keys if result.get(key) is not None)


def run_guarded(label, function):
    """Run one measurement; record an ordinary failure and go on with the next."""
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - one failing target must not end the run
        log(f"{label} failed: {type(error).__name__}: {error}")
        return {"error": f"{type(error).__name__}: {error}"}


def run_all(context, target_list, workload_names, results):
    for workload_name in workload_names:
        function = workloads.THROUGHPUT_WORKLOADS.get(workload_name)
        if function is None:
            continue
        repeats = context.config["repeats"].get(workload_name, 1)
        runs = {target.name: [] for target in target_list}
        for round_number in range(1, repeats + 1):
            for target in target_list:
                label = f"{workload_name}-{target.name}"
                if repeats > 1:
                    label += f"-{round_number}"
                root = workloads.fresh_root(context, label)
                log(f"{workload_name} on {target.name}"
                    + (f" (round {round_number} of {repeats})" if repeats > 1 else ""))
                try:
                    result = run_guarded(f"{workload_name} on {target.name}",
                                         lambda: function(context, target, root))
                finally:
                    workloads.remove_tree(root)
                runs[target.name].append(result)
                log(f"  {summarize(result)}")
        results["throughput"][workload_name] = {
            name: workloads.combine_runs(records) for name, records in runs.items()
        }

    dualfs_targets = [target for target in target_list if isinstance(target, target_module.Dualfs)]
    if "lag" in workload_names:
        for target in dualfs_targets:
            root = workloads.fresh_root(context, f"lag-{target.name}")
            log(f"replication lag on {target.name}")
            try:
                results["lag"][target.name] = run_guarded(
                    f"lag on {target.name}", lambda: workloads.lag_dualfs(context, target, root))
            finally:
                workloads.remove_tree(root)
        root = workloads.fresh_root(context, "lag-lsyncd")
        log("replication lag with lsyncd")
        try:
            results["lag"]["lsyncd"] = run_guarded(
                "lag on lsyncd", lambda: workloads.lag_lsyncd(context, root))
        finally:
            workloads.remove_tree(root)
        for name, record in results["lag"].items():
            if "lag" in record:
                lag = record["lag"]
                log(f"  {name}: lag p50 {lag.get('p50_ms', 0):.1f} ms, "
                    f"p99 {lag.get('p99_ms', 0):.1f} ms, missing {record['missing']}")

    if "latency" in workload_names:
        for target in dualfs_targets:
            states = results["latency"].setdefault(target.mode, {})
            for state in workloads.REMOTE_STATES:
                root = workloads.fresh_root(context, f"latency-{target.name}-{state}")
                log(f"write latency on {target.name}, remote {state}")
                try:
                    states[state] = run_guarded(
                        f"latency on {target.name} ({state})",
                        lambda: workloads.latency(context, target, root, state))
                finally:
                    workloads.remove_tree(root)
                record = states[state]
                if "write_close" in record:
                    log(f"  p50 {record['write_close']['p50_ms']:.2f} ms, "
                        f"p99 {record['write_close']['p99_ms']:.2f} ms")

    if "inodes" in workload_names and dualfs_targets:
        # The daemon's inode table does not depend on the mode; async is the default choice.
        target = next((t for t in dualfs_targets if t.mode == "async"), dualfs_targets[0])
        root = workloads.fresh_root(context, "inodes")
        log(f"walk of {context.config['inode_files']:,} cached inodes on {target.name}")
        try:
            record = run_guarded("inode walk", lambda: workloads.inodes(context, target, root))
        finally:
            workloads.remove_tree(root)
        record["target"] = target.name
        results["inodes"] = record
        log(f"  {summarize(record)}")


def write_results(results, target_names, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "results.json"), "w") as output:
        json.dump(results, output, indent=2, sort_keys=True)
    charts = []
    for name, svg in (("ratios.svg", report.ratio_chart(results, target_names)),
                      ("latency.svg", report.latency_chart(results))):
        if svg:
            with open(os.path.join(results_dir, name), "w") as output:
                output.write(svg)
            charts.append(name)
    text = report.markdown(results, target_names, charts)
    with open(os.path.join(results_dir, "results.md"), "w") as output:
        output.write(text)
    return text


def clean_up(registry, workdir, keep_workdir):
    harness.shield_cleanup()
    registry.stop_all()
    leftovers = harness.mounts_under(workdir)
    for mountpoint in leftovers:
        log(f"{mountpoint} is still mounted; detaching it lazily")
        harness.unmount(mountpoint, lazy=True)
    if harness.mounts_under(workdir):
        log(f"mounts remain below {workdir}; leaving the directory in place")
    elif keep_workdir:
        log(f"kept {workdir}")
    else:
        subprocess.run(["rm", "-rf", "--one-file-system", workdir], check=False)


def report_from(path, results_dir):
    with open(path) as source:
        results = json.load(source)
    names = [name for name in target_module.TARGET_ORDER if name in results.get("targets", {})]
    print(write_results(results, names, results_dir))
    log(f"results written to {results_dir}")


def main():
    arguments = parse_arguments()
    if arguments.report_from:
        report_from(arguments.report_from, arguments.results_dir)
        return
    harness.install_signal_handlers()
    config = dict(QUICK if arguments.quick else FULL, quick=arguments.quick)
    for assignment in arguments.set:
        key, _, value = assignment.partition("=")
        if key not in FULL or key == "repeats" or not value:
            raise BenchmarkError(f"invalid --set {assignment!r}; expected KEY=NUMBER with a key "
                                 f"of {', '.join(k for k in FULL if k != 'repeats')}")
        try:
            config[key] = type(FULL[key])(value)
        except ValueError as error:
            raise BenchmarkError(f"invalid number in --set {assignment!r}: {error}") from error
    if arguments.repeats is not None:
        if arguments.repeats < 1:
            raise BenchmarkError(f"--repeats must be at least 1, not {arguments.repeats}")
        config["repeats"] = {"seqwrite": arguments.repeats, "seqread": arguments.repeats}
    target_names = split_names(arguments.targets, target_module.TARGET_ORDER, "target")
    workload_names = split_names(arguments.workloads, ALL_WORKLOADS, "workload")
    check_environment()
    install_programs(needed_programs(target_names, workload_names), not arguments.no_install)
    dualfs_bin, faultfs_bin = build_binaries(arguments)

    registry = Registry()
    workdir = tempfile.mkdtemp(prefix="dualfs-compare.", dir=arguments.workdir_base)
    started = time.monotonic()
    context = Context(registry, workdir, config, dualfs_bin, faultfs_bin, arguments.dualfs_arg)
    results = {
        "command": describe_command(sys.argv[1:]),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": config,
        "throughput": {},
        "lag": {},
        "latency": {},
    }
    try:
        target_list = target_module.make_targets(context, target_names)
        names = [target.name for target in target_list]
        results["targets"] = {target.name: target.command_line for target in target_list}
        results["machine"] = describe_machine(workdir)
        results["versions"] = describe_versions(arguments)
        context.can_drop_caches = harness.drop_caches()
        if not context.can_drop_caches:
            log("cannot write /proc/sys/vm/drop_caches: cold reads and cold walks are skipped")
        results["config"]["drop_caches"] = context.can_drop_caches
        prepare_corpus(context, workload_names)
        run_all(context, target_list, workload_names, results)
    finally:
        clean_up(registry, workdir, arguments.keep_workdir)
    results["duration_s"] = time.monotonic() - started
    print(write_results(results, names, arguments.results_dir))
    log(f"results written to {arguments.results_dir}")


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:
        print(f"compare.py: {error}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, harness.Interrupted) as interruption:
        print(f"compare.py: interrupted by {interruption or 'SIGINT'}; stopped everything it "
              "had started", file=sys.stderr)
        sys.exit(130)
