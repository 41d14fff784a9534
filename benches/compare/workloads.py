"""The workloads. Each one runs on a fresh mount over fresh directories and returns a dict of
measurements. In it, `rss_peak_kib` and `rss_kib` are the daemon's VmHWM and VmRSS at the end."""

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import threading
import time

from harness import (
    BenchmarkError, Daemon, drop_caches, log, mounts_under, run, settle, summarize_ms,
)
from targets import DualfsInstance, Faultfs

MIB = 1 << 20


# --- shared helpers -------------------------------------------------------------------------


def fresh_root(context, label):
    root = os.path.join(context.workdir, label)
    os.makedirs(root)
    return root


def remove_tree(root):
    """Delete a run's directories, unless something is still mounted below them."""
    leftovers = mounts_under(root)
    if leftovers:
        log(f"not deleting {root}: still mounted below it: {', '.join(leftovers)}")
        return
    subprocess.run(["rm", "-rf", "--one-file-system", root], check=False)


def record_memory(result, instance):
    memory = instance.memory()
    if memory:
        result["rss_peak_kib"] = memory.get("VmHWM")
        result["rss_kib"] = memory.get("VmRSS")


def fio(filename, *options):
    """Run one fio job on `filename` and return the job's JSON record.

    invalidate=0 keeps fio from dropping the page cache of the file before the job, because
    the benchmark decides itself when caches are cold (drop_caches) and when they are warm.
    """
    command = [
        "fio", "--output-format=json", "--name=job", f"--filename={filename}",
        "--ioengine=psync", "--invalidate=0", *options,
    ]
    return fio_jobs(command)[0]


def fio_jobs(command):
    completed = run(command)
    text = completed.stdout
    try:
        report = json.loads(text[text.index("{"):])
    except ValueError as error:
        raise BenchmarkError(f"fio printed no JSON report ({error}): {text[-500:]}") from error
    for job in report["jobs"]:
        if job.get("error"):
            raise BenchmarkError(f"fio job {job['jobname']} failed with error {job['error']}")
    return report["jobs"]


def fio_seconds(job, side):
    """Return the I/O time of a fio job in seconds, which includes the final fsync of
    end_fsync=1 but not fio's start-up (0.3 s when measured once)."""
    return job[side]["runtime"] / 1000


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_empty(path):
    # open+close: on ext4 with kernel 6.x this was about 10 times faster than mknod(S_IFREG).
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def make_flat_tree(directory, files, per_dir=1000):
    """Create `files` empty regular files in subdirectories of `per_dir` files each."""
    for index in range(files):
        if index % per_dir == 0:
            subdir = os.path.join(directory, f"d{index // per_dir:05d}")
            os.mkdir(subdir)
        create_empty(os.path.join(subdir, f"f{index % per_dir:04d}"))


def make_nested_tree(directory, files, fanout=100, per_dir=1000):
    """Create `files` empty files in two directory levels: `fanout` top directories, each
    with subdirectories of `per_dir` files."""
    for index in range(files):
        if index % per_dir == 0:
            leaf = index // per_dir
            top = os.path.join(directory, f"t{leaf % fanout:03d}")
            if leaf < fanout:
                os.mkdir(top)
            subdir = os.path.join(top, f"s{leaf // fanout:05d}")
            os.mkdir(subdir)
        create_empty(os.path.join(subdir, f"f{index % per_dir:04d}"))


def walk(path):
    """Stat every entry below `path` with find; return (seconds, entries printed)."""
    start = time.perf_counter()
    completed = subprocess.run(
        ["find", path, "-printf", "%i %s %T@\n"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise BenchmarkError(f"find {path} failed: {completed.stderr.decode()[-1000:]}")
    return elapsed, completed.stdout.count(b"\n")


def with_instance(target, root, body, **start_options):
    """Start `target` in `root`, run body(instance), record the daemon's memory, stop it."""
    instance = target.start(root, **start_options)
    try:
        result = body(instance)
        record_memory(result, instance)
        return result
    finally:
        target.stop(instance)


# --- throughput workloads, run on every target ------------------------------------------------


def seqwrite(context, target, root):
    size = context.config["seq_size_mib"] * MIB

    def body(instance):
        settle()
        path = os.path.join(instance.path, "seq.bin")
        job = fio(path, "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1")
        seconds = fio_seconds(job, "write")
        result = {"seconds": seconds, "mib_s": size / MIB / seconds}
        if isinstance(instance, DualfsInstance):
            # Both trees hold the bytes durably once the queue is empty and the remote copy
            # is fsynced, which is what the native double write below provides.
            start = time.perf_counter()
            instance.wait_synced()
            fsync_path(os.path.join(instance.remote, "seq.bin"))
            result["both_seconds"] = seconds + time.perf_counter() - start
        return result

    result = with_instance(target, root, body)
    if target.name == "native":
        result["both_seconds"] = native_double_write(root, size)
    return result


def native_double_write(root, size):
    """Write the same bytes into two plain directories at once, one fio job each, and return
    the runtime of the slower job."""
    first = os.path.join(root, "double-a")
    second = os.path.join(root, "double-b")
    os.makedirs(first)
    os.makedirs(second)
    settle()
    jobs = fio_jobs([
        "fio", "--output-format=json", "--ioengine=psync", "--invalidate=0", "--rw=write",
        "--bs=1M", f"--size={size}", "--end_fsync=1",
        "--name=a", f"--filename={first}/seq.bin", "--name=b", f"--filename={second}/seq.bin",
    ])
    return max(fio_seconds(job, "write") for job in jobs)


def seqread(context, target, root):
    size = context.config["seq_size_mib"] * MIB

    def body(instance):
        path = os.path.join(instance.path, "seq.bin")
        read = ["--rw=read", "--bs=1M", f"--size={size}"]
        result = {}
        if context.can_drop_caches:
            drop_caches()
            job = fio(path, *read)
            result["cold_mib_s"] = size / MIB / fio_seconds(job, "read")
        else:
            fio(path, *read)
        job = fio(path, *read)
        result["warm_mib_s"] = size / MIB / fio_seconds(job, "read")
        return result

    return with_instance(target, root, body, populate=copy_into(context.seq_file, "seq.bin"))


def copy_into(source, name):
    """Return a populate function that copies `source` as `name` into every directory."""

    def populate(dirs):
        for directory in dirs:
            shutil.copyfile(source, os.path.join(directory, name))

    return populate


def _random_io(context, target, root, mode):
    size = context.config["rand_size_mib"] * MIB
    runtime = context.config["rand_runtime_s"]

    def body(instance):
        settle()
        # The file exists in the backing directories already, so fio reads and overwrites
        # allocated blocks and spends no time laying the file out through the mount.
        job = fio(os.path.join(instance.path, "rand.bin"), f"--rw={mode}", "--bs=4k",
                  f"--size={size}", "--time_based", f"--runtime={runtime}")
        side = job["read" if mode == "randread" else "write"]
        percentiles = side["clat_ns"].get("percentile", {})
        return {
            "iops": side["iops"],
            "p50_us": percentiles.get("50.000000", 0) / 1000,
            "p99_us": percentiles.get("99.000000", 0) / 1000,
        }

    return with_instance(target, root, body, populate=copy_into(context.rand_file, "rand.bin"))


def randread(context, target, root):
    return _random_io(context, target, root, "randread")


def randwrite(context, target, root):
    return _random_io(context, target, root, "randwrite")


def smallfiles(context, target, root):
    count = context.config["small_files"]
    payload = os.urandom(4096)

    def body(instance):
        settle()
        start = time.perf_counter()
        for index in range(count):
            if index % 1000 == 0:
                directory = os.path.join(instance.path, f"d{index // 1000:03d}")
                os.mkdir(directory)
            fd = os.open(os.path.join(directory, f"f{index:05d}"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
        seconds = time.perf_counter() - start
        result = {"seconds": seconds, "files_s": count / seconds}
        if isinstance(instance, DualfsInstance):
            instance.wait_synced()
            result["synced_seconds"] = time.perf_counter() - start
        return result

    return with_instance(target, root, body)


def statwalk(context, target, root):
    count = context.config["walk_files"]

    def populate(dirs):
        for directory in dirs:
            make_flat_tree(directory, count)

    def body(instance):
        expected = count + -(-count // 1000) + 1
        result = {"entries_expected": expected}
        if context.can_drop_caches:
            drop_caches()
        seconds, entries = walk(instance.path)
        result.update(cold_seconds=seconds, cold_entries_s=entries / seconds, entries=entries)
        seconds, entries = walk(instance.path)
        result.update(warm_seconds=seconds, warm_entries_s=entries / seconds)
        if entries != expected:
            result["note"] = f"find printed {entries} entries, {expected} expected"
        return result

    return with_instance(target, root, body, populate=populate)


def unpack(context, target, root):
    def body(instance):
        settle()
        start = time.perf_counter()
        for archive in context.archives:
            run(["tar", "-xf", archive, "-C", instance.path])
        seconds = time.perf_counter() - start
        result = {"seconds": seconds, "files": context.archive_entries,
                  "files_s": context.archive_entries / seconds}
        if isinstance(instance, DualfsInstance):
            instance.wait_synced()
            result["synced_seconds"] = time.perf_counter() - start
        return result

    return with_instance(target, root, body)


def combine_runs(records):
    """Merge repeated runs of one workload on one target into one record.

    Numbers become the median of the successful runs (peak RSS the maximum), and `runs`
    keeps every run's numbers. All runs failing gives the first error.
    """
    if len(records) == 1:
        return records[0]
    good = [record for record in records if "error" not in record]
    if not good:
        return records[0]
    combined = {"runs": [{key: value for key, value in record.items()
                          if isinstance(value, (int, float))} for record in good]}
    for key in good[0]:
        values = [record[key] for record in good if isinstance(record.get(key), (int, float))]
        if not values:
            combined[key] = good[0][key]
        elif key == "rss_peak_kib":
            combined[key] = max(values)
        else:
            combined[key] = statistics.median(values)
    failed = [record for record in records if "error" in record]
    if failed:
        combined["note"] = f"{len(failed)} of {len(records)} runs failed: {failed[0]['error']}"
    return combined


THROUGHPUT_WORKLOADS = {
    "seqwrite": seqwrite,
    "seqread": seqread,
    "randread": randread,
    "randwrite": randwrite,
    "smallfiles": smallfiles,
    "statwalk": statwalk,
    "unpack": unpack,
}


# --- replication lag --------------------------------------------------------------------------


def measure_lag(write_dir, remote_dir, count, interval_s, size, timeout_s=60.0):
    """Write `count` files into `write_dir`, one every `interval_s`, and poll `remote_dir`
    every millisecond until each copy there has the written size and SHA-256.

    Returns the close-to-remote lags in seconds, the write+close latencies, and the names
    that never arrived within `timeout_s` after the last close.
    """
    pending = {}
    lags = []
    lock = threading.Lock()
    writing_done = threading.Event()

    def matches(name, digest):
        path = os.path.join(remote_dir, name)
        try:
            if os.stat(path).st_size != size:
                return False
            with open(path, "rb") as copy:
                return hashlib.sha256(copy.read()).digest() == digest
        except FileNotFoundError:
            return False

    def poll():
        deadline = None
        while True:
            with lock:
                snapshot = list(pending.items())
            for name, (closed_at, digest) in snapshot:
                if matches(name, digest):
                    arrived = time.perf_counter()
                    with lock:
                        del pending[name]
                        lags.append(arrived - closed_at)
            if writing_done.is_set():
                if not snapshot:
                    return
                deadline = deadline or time.perf_counter() + timeout_s
                if time.perf_counter() > deadline:
                    return
            time.sleep(0.001)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    write_latencies = []
    start = time.perf_counter()
    try:
        for index in range(count):
            delay = start + index * interval_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            data = os.urandom(size)
            digest = hashlib.sha256(data).digest()
            name = f"lag{index:05d}"
            opened = time.perf_counter()
            fd = os.open(os.path.join(write_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o644)
            os.write(fd, data)
            os.close(fd)
            closed = time.perf_counter()
            write_latencies.append(closed - opened)
            with lock:
                pending[name] = (closed, digest)
    finally:
        writing_done.set()
        poller.join()
    return lags, write_latencies, sorted(pending)


def lag_result(lags, write_latencies, missing, count):
    return {
        "files": count,
        "lag": summarize_ms(lags),
        "write_close": summarize_ms(write_latencies),
        "missing": len(missing),
    }


def lag_dualfs(context, target, root):
    config = context.config

    def body(instance):
        settle()
        lags, latencies, missing = measure_lag(
            instance.path, instance.remote, config["lag_files"], config["lag_interval_s"],
            config["lag_file_size"],
        )
        return lag_result(lags, latencies, missing, config["lag_files"])

    return with_instance(target, root, body)


LSYNCD_CONFIG = """\
settings {{
    nodaemon = true,
    logfile = "{log}",
    statusFile = "{status}",
}}
sync {{
    default.rsync,
    source = "{source}",
    target = "{target}",
    delay = 0,
    rsync = {{ archive = true }},
}}
"""


def lag_lsyncd(context, root):
    """Mirror a plain directory to another with lsyncd and measure the same lag."""
    config = context.config
    source = os.path.join(root, "source")
    target = os.path.join(root, "target")
    os.makedirs(source)
    os.makedirs(target)
    log_path = os.path.join(root, "lsyncd.log")
    config_path = os.path.join(root, "lsyncd.lua")
    with open(config_path, "w") as lua:
        lua.write(LSYNCD_CONFIG.format(log=log_path, status=os.path.join(root, "lsyncd.status"),
                                       source=source, target=target))
    daemon = context.registry.add(
        Daemon("lsyncd", ["lsyncd", config_path], os.path.join(root, "lsyncd.out"))
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if not daemon.alive():
                raise BenchmarkError(f"lsyncd exited early; its output:\n{daemon.log_tail()}")
            if os.path.exists(log_path):
                with open(log_path) as startup_log:
                    if "finished" in startup_log.read():
                        break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"lsyncd did not finish its startup sync within 30 s:\n"
                                     f"{daemon.log_tail()}")
            time.sleep(0.05)
        settle()
        lags, latencies, missing = measure_lag(
            source, target, config["lag_files"], config["lag_interval_s"],
            config["lag_file_size"],
        )
        return lag_result(lags, latencies, missing, config["lag_files"])
    finally:
        context.registry.stop(daemon)


# --- write latency with a slow or hung remote --------------------------------------------------

REMOTE_STATES = {
    "healthy": "",
    "slow": "* * delay=5ms\n",
    "hung": "* * hang\n",
}


def latency(context, target, root, state):
    """Time open+write(4 KiB)+close of new files through dualfs over faultfs in `state`."""
    config = context.config
    faultfs = Faultfs(context, root)
    instance = None
    try:
        instance = target.start(root, remote=faultfs.mountpoint)
        directory = os.path.join(instance.path, "lat")
        os.mkdir(directory)
        payload = os.urandom(4096)
        for index in range(5):
            with open(os.path.join(directory, f"warm{index}"), "wb") as warm:
                warm.write(payload)
        instance.wait_synced(timeout=60)

        faultfs.set_rules(REMOTE_STATES[state])
        # faultfs rereads its rules on the next request after the file changes.
        time.sleep(0.2)
        durations = []
        start = time.perf_counter()
        for index in range(config["latency_files"]):
            if time.perf_counter() - start > config["latency_max_s"]:
                break
            delay = start + index * config["latency_interval_s"] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            began = time.perf_counter()
            fd = os.open(os.path.join(directory, f"f{index:05d}"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
            durations.append(time.perf_counter() - began)
        result = {
            "write_close": summarize_ms(durations),
            "over_1s": sum(1 for duration in durations if duration > 1.0),
        }
        result["remote_health"] = os.getxattr(instance.path, "user.dualfs.remote").decode()
        record_memory(result, instance)
        faultfs.release()
        result["drain_seconds"] = instance.wait_synced(timeout=120)
        return result
    finally:
        faultfs.release()
        if instance is not None:
            target.stop(instance)
        context.registry.stop(faultfs)


# --- memory after a walk of many cached inodes ---------------------------------------------------

INODE_WALK_ARGS = ("--entry-ttl", "3600s", "--attr-ttl", "3600s")


def inodes(context, target, root):
    count = context.config["inode_files"]

    def populate(dirs):
        start = time.perf_counter()
        make_nested_tree(dirs[0], count)
        log(f"created {count} files in {time.perf_counter() - start:.1f} s")

    def body(instance):
        before = instance.memory()
        seconds, entries = walk(instance.path)
        return {
            "files": count,
            "entries": entries,
            "walk_seconds": seconds,
            "rss_before_walk_kib": before.get("VmRSS"),
            "options": " ".join(INODE_WALK_ARGS),
        }

    return with_instance(target, root, body, populate=populate, populate_remote=False,
                         extra_args=INODE_WALK_ARGS)
