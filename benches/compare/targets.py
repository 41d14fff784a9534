"""The filesystems under comparison and how each one is mounted over fresh directories.

Every target starts from an empty directory `root` of its own. `populate(dirs)` is called before
the mount with the backing directories that hold existing data in that target's steady state,
so that read workloads find their files without writing them through the mount.
"""

import os
import time

from harness import BenchmarkError, FuseMount, log

STATE_XATTR = "user.dualfs.state"


class Instance:
    """One mounted (or, for native, plain) target: the path that workloads use."""

    def __init__(self, target, root, path, data_dirs, mount=None):
        self.target = target
        self.root = root
        self.path = path
        self.data_dirs = data_dirs
        self.mount = mount

    @property
    def pid(self):
        return self.mount.pid if self.mount else None

    def memory(self):
        """Return the daemon's VmHWM and VmRSS in KiB, or {} for a native directory."""
        return self.mount.memory() if self.mount else {}


class DualfsInstance(Instance):
    def __init__(self, target, root, path, local, remote, mount):
        super().__init__(target, root, path, [local, remote], mount)
        self.local = local
        self.remote = remote

    def state(self):
        return os.getxattr(self.path, STATE_XATTR).decode()

    def wait_synced(self, timeout=600.0, interval=0.005):
        """Poll the mount root until nothing is queued; return the seconds waited."""
        start = time.perf_counter()
        deadline = start + timeout
        while True:
            if self.state() == "synced":
                return time.perf_counter() - start
            if time.perf_counter() > deadline:
                raise BenchmarkError(
                    f"{self.path} did not report synced within {timeout:.0f} s "
                    f"(queue: {os.getxattr(self.path, 'user.dualfs.queue').decode()})"
                )
            time.sleep(interval)


class Target:
    """Base class: `start` makes the directories, populates them, mounts, and returns an
    Instance registered for cleanup."""

    name = ""
    # Command line as BENCHMARKS.md shows it, with placeholders for the directories.
    command_line = ""
    binary = None

    def __init__(self, context):
        self.context = context

    def _mkdirs(self, root, *names):
        paths = [os.path.join(root, name) for name in names]
        for path in paths:
            os.makedirs(path)
        return paths

    def _mount(self, command, mountpoint, root, stop_with_signal=False, env=None):
        mount = FuseMount(
            self.name, command, mountpoint, os.path.join(root, "daemon.log"),
            stop_with_signal=stop_with_signal, env=env,
        )
        self.context.registry.add(mount)
        try:
            mount.wait_mounted()
        except BaseException:
            self.context.registry.stop(mount)
            raise
        return mount

    def stop(self, instance):
        if instance.mount:
            self.context.registry.stop(instance.mount)


class Native(Target):
    name = "native"
    command_line = "(plain directory on the same disk, no FUSE)"

    def start(self, root, populate=None):
        (data,) = self._mkdirs(root, "data")
        if populate:
            populate([data])
        return Instance(self, root, data, [data])


class Dualfs(Target):
    binary = "dualfs"

    def __init__(self, context, mode):
        super().__init__(context)
        self.mode = mode
        self.name = f"dualfs-{mode}"
        self.command_line = (
            f"dualfs mount --local LOCAL --remote REMOTE --mode {mode} "
            "--metrics-addr 127.0.0.1:0 MNT"
        )

    def arguments(self, local, remote, mountpoint, extra_args=()):
        return [
            self.context.dualfs_bin, "mount", "--local", local, "--remote", remote,
            "--mode", self.mode, "--metrics-addr", "127.0.0.1:0",
            *self.context.dualfs_args, *extra_args, mountpoint,
        ]

    def start(self, root, populate=None, extra_args=(), remote=None, populate_remote=True):
        """Mount dualfs; `remote` replaces the fresh remote directory (a faultfs mount)."""
        local, mountpoint = self._mkdirs(root, "local", "mnt")
        if remote is None:
            (remote,) = self._mkdirs(root, "remote")
        if populate:
            # After a completed sync, both trees contain the same data.
            populate([local, remote] if populate_remote else [local])
        mount = self._mount(
            self.arguments(local, remote, mountpoint, extra_args), mountpoint, root,
            stop_with_signal=True, env={**os.environ, "NO_COLOR": "1"},
        )
        return DualfsInstance(self, root, mountpoint, local, remote, mount)


class Mergerfs(Target):
    name = "mergerfs"
    binary = "mergerfs"
    # ff (first found) places new files on the first branch, as dualfs places them locally.
    command_line = "mergerfs -f -o category.create=ff LOCAL:REMOTE MNT"

    def start(self, root, populate=None):
        local, remote, mountpoint = self._mkdirs(root, "local", "remote", "mnt")
        if populate:
            populate([local])
        mount = self._mount(
            ["mergerfs", "-f", "-o", "category.create=ff", f"{local}:{remote}", mountpoint],
            mountpoint, root,
        )
        return Instance(self, root, mountpoint, [local], mount)


class Bindfs(Target):
    name = "bindfs"
    binary = "bindfs"
    command_line = "bindfs -f SOURCE MNT"

    def start(self, root, populate=None):
        source, mountpoint = self._mkdirs(root, "source", "mnt")
        if populate:
            populate([source])
        mount = self._mount(["bindfs", "-f", source, mountpoint], mountpoint, root)
        return Instance(self, root, mountpoint, [source], mount)


class FuseOverlayfs(Target):
    name = "fuse-overlayfs"
    binary = "fuse-overlayfs"
    command_line = "fuse-overlayfs -f -o lowerdir=LOWER,upperdir=UPPER,workdir=WORK MNT"

    def start(self, root, populate=None):
        lower, upper, work, mountpoint = self._mkdirs(root, "lower", "upper", "work", "mnt")
        if populate:
            populate([lower])
        mount = self._mount(
            ["fuse-overlayfs", "-f", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
             mountpoint],
            mountpoint, root,
        )
        return Instance(self, root, mountpoint, [lower], mount)


class UnionfsFuse(Target):
    name = "unionfs-fuse"
    binary = "unionfs"
    command_line = "unionfs -f -o cow LOCAL=RW:REMOTE=RO MNT"

    def start(self, root, populate=None):
        local, remote, mountpoint = self._mkdirs(root, "local", "remote", "mnt")
        if populate:
            populate([local])
        mount = self._mount(
            ["unionfs", "-f", "-o", "cow", f"{local}=RW:{remote}=RO", mountpoint],
            mountpoint, root,
        )
        return Instance(self, root, mountpoint, [local], mount)


class Rclone(Target):
    name = "rclone"
    binary = "rclone"
    command_line = (
        "rclone --config CONF mount local:REMOTE MNT --vfs-cache-mode writes --cache-dir CACHE "
        "(CONF holds one remote: [local] type = local)"
    )

    def start(self, root, populate=None):
        remote, cache, mountpoint = self._mkdirs(root, "remote", "cache", "mnt")
        config = os.path.join(root, "rclone.conf")
        with open(config, "w") as conf:
            conf.write("[local]\ntype = local\n")
        if populate:
            populate([remote])
        mount = self._mount(
            ["rclone", "--config", config, "mount", f"local:{remote}", mountpoint,
             "--vfs-cache-mode", "writes", "--cache-dir", cache],
            mountpoint, root,
        )
        return Instance(self, root, mountpoint, [remote], mount)


class Faultfs:
    """A faultfs mount over a backing directory, used as dualfs's remote."""

    name = "faultfs"

    def __init__(self, context, root):
        self.context = context
        self.backing = os.path.join(root, "remote-backing")
        self.mountpoint = os.path.join(root, "remote")
        self.control = os.path.join(root, "faultfs.rules")
        os.makedirs(self.backing)
        os.makedirs(self.mountpoint)
        open(self.control, "w").close()
        self.mount = FuseMount(
            "faultfs",
            [context.faultfs_bin, "mount", "--backing", self.backing, "--control", self.control,
             self.mountpoint],
            self.mountpoint, os.path.join(root, "faultfs.log"), stop_with_signal=True,
        )
        # Registered before dualfs, so dualfs stops first; the registry releases held
        # requests before it stops anything.
        context.registry.add(self)
        try:
            self.mount.wait_mounted()
        except BaseException:
            context.registry.stop(self)
            raise

    @property
    def pid(self):
        return self.mount.pid

    def set_rules(self, text):
        # Write a new file and rename it over the control file, so that faultfs never reads
        # a half-written rule.
        staging = self.control + ".new"
        with open(staging, "w") as rules:
            rules.write(text)
        os.replace(staging, self.control)

    def release(self):
        """Remove every rule, so that held requests pass through."""
        self.set_rules("")

    def stop(self):
        self.release()
        self.mount.stop()


TARGET_ORDER = [
    "native", "dualfs-sync", "dualfs-async", "mergerfs", "bindfs", "fuse-overlayfs",
    "unionfs-fuse", "rclone",
]


def make_targets(context, names):
    factories = {
        "native": lambda: Native(context),
        "dualfs-sync": lambda: Dualfs(context, "sync"),
        "dualfs-async": lambda: Dualfs(context, "async"),
        "mergerfs": lambda: Mergerfs(context),
        "bindfs": lambda: Bindfs(context),
        "fuse-overlayfs": lambda: FuseOverlayfs(context),
        "unionfs-fuse": lambda: UnionfsFuse(context),
        "rclone": lambda: Rclone(context),
    }
    unknown = [name for name in names if name not in factories]
    if unknown:
        raise BenchmarkError(
            f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGET_ORDER)}"
        )
    if "native" not in names:
        log("adding target native: every ratio is relative to it")
        names = ["native", *names]
    return [factories[name]() for name in names]
