"""Process, mount and measurement helpers shared by the targets and workloads.

Every daemon and mount that the benchmark starts is registered with a `Registry`, which stops
them in reverse order on success, on an exception and on SIGINT, SIGTERM or SIGHUP.
"""

import os
import signal
import statistics
import subprocess
import sys
import time

# Seconds to wait for a FUSE mount to appear after its daemon starts.
MOUNT_TIMEOUT = 20.0
# Seconds to wait for a daemon to exit after its mount is gone or after SIGTERM.
# dualfs drains its queue to the remote before it exits, which can take a while.
STOP_TIMEOUT = 120.0

_started = time.monotonic()


def log(message):
    """Print a progress line with the elapsed time of the run to stderr."""
    elapsed = int(time.monotonic() - _started)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


class BenchmarkError(Exception):
    """A step of the benchmark failed; the message names the step and the cause."""


def _unescape_mountinfo(field):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    out = []
    i = 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts():
    """Return (mount point, filesystem type) pairs from /proc/self/mountinfo."""
    result = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            separator = fields.index("-")
            result.append((_unescape_mountinfo(fields[4]), fields[separator + 1]))
    return result


def is_mounted(path):
    return any(point == path for point, _ in mounts())


def mounts_under(directory):
    """Return mount points at or below `directory`, deepest first."""
    prefix = directory.rstrip("/") + "/"
    found = [point for point, _ in mounts() if point == directory or point.startswith(prefix)]
    return sorted(found, key=len, reverse=True)


def drop_caches():
    """Write back dirty pages, then drop the page, dentry and inode caches.

    Returns False when the kernel does not allow it (for example inside a container).
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError:
        return False
    return True


def settle():
    """Write back dirty pages so that the next measurement does not pay for earlier ones."""
    os.sync()
    time.sleep(0.2)


def memory_kib(pid):
    """Return {'VmHWM': KiB, 'VmRSS': KiB} of a live process, or {} if it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return values


def descendants(pid):
    """Return the ids of the live processes below `pid` (children, their children, ...)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def memory_kib_tree(pid):
    """Return VmHWM and VmRSS summed over a process and its descendants.

    `dualfs mount` is a supervisor whose child serves the mount, so the memory of a mount is
    the sum of both. The summed VmHWM is an upper bound of the peak, as the processes may peak
    at different times.
    """
    total = memory_kib(pid)
    for child in descendants(pid):
        for key, value in memory_kib(child).items():
            total[key] = total.get(key, 0) + value
    return total


def percentile(samples, fraction):
    """Return the nearest-rank percentile of `samples` (fraction 0.5 for p50, 0.99 for p99)."""
    ordered = sorted(samples)
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def summarize_ms(samples_s):
    """Return count, p50, p99, max and mean in milliseconds of durations given in seconds."""
    if not samples_s:
        return {"count": 0}
    return {
        "count": len(samples_s),
        "p50_ms": percentile(samples_s, 0.50) * 1000,
        "p99_ms": percentile(samples_s, 0.99) * 1000,
        "max_ms": max(samples_s) * 1000,
        "mean_ms": statistics.fmean(samples_s) * 1000,
    }


def run(command, timeout=None, **kwargs):
    """Run a command and raise BenchmarkError with its output if it fails."""
    completed = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
        **kwargs,
    )
    if completed.returncode != 0:
        raise BenchmarkError(
            f"{' '.join(map(str, command))} failed with exit code {completed.returncode}: "
            f"{(completed.stderr or completed.stdout).strip()[-2000:]}"
        )
    return completed


def close_descriptors_below(directory):
    """Close this process's file descriptors for paths at or below `directory`.

    An interrupted workload can leave a descriptor open on a mount, which keeps the mount
    busy, so its daemon would wait for the descriptor while the benchmark waits for it.
    """
    prefix = directory.rstrip("/") + "/"
    for name in os.listdir("/proc/self/fd"):
        try:
            path = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if path == directory or path.startswith(prefix):
            try:
                os.close(int(name))
            except OSError:
                pass


def unmount(path, lazy=False):
    """Unmount `path`; return True if it is no longer mounted."""
    command = ["umount", "-l", path] if lazy else ["umount", path]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return not is_mounted(path)


class Daemon:
    """A background process that the benchmark started, with its log file."""

    def __init__(self, name, command, log_path, env=None):
        self.name = name
        self.command = [str(part) for part in command]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        # A session of its own keeps Ctrl-C at the terminal away from the daemon, so the
        # benchmark decides the order in which mounts stop.
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
        self.pid = self.process.pid

    def alive(self):
        return self.process.poll() is None

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as text:
                return "".join(text.readlines()[-lines:])
        except OSError as error:
            return f"(cannot read {self.log_path}: {error})"

    def signal(self, number):
        if self.alive():
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout=STOP_TIMEOUT):
        """Stop with SIGTERM, then SIGKILL after `timeout` seconds; return the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if not self.wait(timeout):
                log(f"{self.name} (pid {self.pid}) did not exit {timeout:.0f} s after SIGTERM; "
                    "sending SIGKILL")
                self.signal(signal.SIGKILL)
                self.wait(30)
        self._log.close()
        return self.process.returncode


class FuseMount:
    """A FUSE daemon serving one mount point.

    `stop_with_signal` selects how the mount ends: dualfs and faultfs unmount and exit on
    SIGTERM, the other daemons exit when their mount point is unmounted.
    """

    def __init__(self, name, command, mountpoint, log_path, stop_with_signal=False, env=None):
        self.name = name
        self.mountpoint = mountpoint
        self.stop_with_signal = stop_with_signal
        self.daemon = Daemon(name, command, log_path, env=env)
        self.pid = self.daemon.pid

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.daemon.alive():
                raise BenchmarkError(
                    f"{self.name} exited with code {self.daemon.process.returncode} before "
                    f"mounting {self.mountpoint}; its log:\n{self.daemon.log_tail()}"
                )
            if is_mounted(self.mountpoint):
                try:
                    os.listdir(self.mountpoint)
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise BenchmarkError(
            f"{self.name} did not mount {self.mountpoint} within {timeout:.0f} s; its log:\n"
            f"{self.daemon.log_tail()}"
        )

    def memory(self):
        return memory_kib_tree(self.pid)

    def stop(self):
        """Unmount and wait for the daemon to exit; fall back to SIGKILL and a lazy unmount."""
        close_descriptors_below(self.mountpoint)
        if self.stop_with_signal:
            self.daemon.stop()
        else:
            if is_mounted(self.mountpoint) and not unmount(self.mountpoint):
                log(f"{self.mountpoint} is busy; detaching it lazily")
                unmount(self.mountpoint, lazy=True)
            if not self.daemon.wait(STOP_TIMEOUT):
                self.daemon.stop(timeout=10)
            else:
                self.daemon.stop()
        if is_mounted(self.mountpoint):
            log(f"{self.mountpoint} is still mounted after {self.name} exited; detaching it")
            unmount(self.mountpoint, lazy=True)
        code = self.daemon.process.returncode
        if code not in (0, None):
            log(f"{self.name} exited with code {code}; last log lines:\n{self.daemon.log_tail(10)}")
        return code


class Registry:
    """Everything the benchmark started, stopped in reverse order by `stop_all`.

    Items need a `stop()` method. Items with a `release()` method (faultfs, whose rules may
    hold requests) are released first, so that no daemon stays blocked on a held request.
    """

    def __init__(self):
        self._items = []

    def add(self, item):
        self._items.append(item)
        return item

    def stop(self, item):
        """Stop one item now and forget it."""
        if item in self._items:
            self._items.remove(item)
        item.stop()

    def stop_all(self):
        for item in self._items:
            release = getattr(item, "release", None)
            if release is not None:
                try:
                    release()
                except Exception as error:  # noqa: BLE001 - cleanup goes on with the rest
                    log(f"releasing {item.name} failed: {error}")
        while self._items:
            item = self._items.pop()
            try:
                item.stop()
            except Exception as error:  # noqa: BLE001 - cleanup goes on with the rest
                log(f"stopping {getattr(item, 'name', item)} failed: {error}")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived; raised so that `finally` blocks clean up."""


def install_signal_handlers():
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then keeps
    # it ignored instead of raising KeyboardInterrupt.
    def on_signal(number, _frame):
        raise Interrupted(signal.Signals(number).name)

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, on_signal)


def shield_cleanup():
    """Ignore further SIGINT, SIGTERM and SIGHUP so that a second Ctrl-C cannot cut cleanup short."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda _number, _frame: log("cleanup in progress, please wait"))
