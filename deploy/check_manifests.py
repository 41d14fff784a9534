#!/usr/bin/env python3
"""Check rendered Kubernetes manifests for mistakes that schema validation does not catch.

Schema validation checks that each field has the right type. This script checks how fields
relate: mount propagation against the privileged flag, volume mounts against volumes, and probe
ports against container ports. It also checks resource quantities, the dualfs daemon's
arguments against its pod, the EFS volumes, the PodMonitor against the pods it scrapes, and the
PromQL of PrometheusRules.

Usage: check_manifests.py [--reject-placeholders] FILE... ("-" reads standard input)
Exit status: 0 when every check passes, 1 when a check fails, 2 when a file cannot be read or
parsed.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

try:
    import promql_parser
except ImportError:  # The PromQL check is skipped with a notice when the parser is missing.
    promql_parser = None

# A Kubernetes resource quantity (k8s.io/apimachinery/pkg/api/resource): a signed decimal
# number with an optional binary suffix (Ki..Ei), decimal suffix (m, k, M..E) or exponent.
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[mkMGTPE]|[eE][+-]?\d+)?$")
QUANTITY_FACTORS = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}

# An EFS volume handle of the efs-csi driver: FILE_SYSTEM_ID[:SUBPATH[:ACCESS_POINT_ID]].
# File system and access point ids have 8 or 17 hexadecimal digits.
EFS_HANDLE = re.compile(
    r"^(?P<fs>fs-(?:[0-9a-f]{8}|[0-9a-f]{17}))"
    r"(?::(?P<path>/[^:]*)?(?::(?P<ap>fsap-(?:[0-9a-f]{8}|[0-9a-f]{17})))?)?$"
)
PLACEHOLDER_ID = re.compile(r"^(fs|fsap)-0+$")
PLACEHOLDER_ACCOUNT = "000000000000"

# Durations as dualfs parses them (humantime): one or more NUMBER UNIT pairs, such as 90s or 1m30s.
DURATION_PART = re.compile(r"(\d+)\s*(ms|s|m|h)")
DURATION_SECONDS = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
DUALFS_DEFAULTS = {"--metrics-addr": "127.0.0.1:9464", "--drain-timeout": "60s"}
DEFAULT_GRACE_SECONDS = 30


@dataclass
class Finding:
    source: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.resource}: {self.message}"


@dataclass
class Manifest:
    source: str
    document: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.document.get("kind", ""))

    @property
    def name(self) -> str:
        return str(mapping(self.document, "metadata").get("name", ""))

    @property
    def namespace(self) -> str:
        return str(mapping(self.document, "metadata").get("namespace") or "default")

    @property
    def label(self) -> str:
        if mapping(self.document, "metadata").get("namespace"):
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"

    def finding(self, message: str) -> Finding:
        return Finding(self.source, self.label, message)


@dataclass
class PodTemplate:
    manifest: Manifest
    labels: dict[str, str]
    spec: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)

    def report(self, message: str) -> None:
        self.findings.append(self.manifest.finding(message))


def mapping(parent: Any, key: str) -> dict[str, Any]:
    """Return parent[key] when it is a mapping, else an empty one (for absent or null fields)."""
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


def load_manifests(paths: list[str]) -> list[Manifest]:
    manifests = []
    for path in paths:
        if path == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            with open(path, encoding="utf-8") as handle:
                text, source = handle.read(), path
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise ValueError(f"{source}: a document is a {type(document).__name__}, not a mapping")
            manifests.append(Manifest(source, document))
    return manifests


def parse_quantity(value: Any) -> float | None:
    """Return the quantity as a number, or None when it is malformed."""
    text = str(value)
    match = QUANTITY.match(text)
    if not match:
        return None
    suffix = match.group(3) or ""
    if suffix not in QUANTITY_FACTORS:
        return float(text)  # A decimal exponent such as 1e3. A lone E is the suffix exa and has a factor.
    number = float(text[: len(text) - len(suffix)] if suffix else text)
    return number * QUANTITY_FACTORS[suffix]


def parse_duration(text: str) -> float | None:
    """Return a humantime duration in seconds, or None when it is malformed."""
    compact = text.replace(" ", "")
    parts = DURATION_PART.findall(compact)
    if not parts or "".join(number + unit for number, unit in parts) != compact:
        return None
    return sum(int(number) * DURATION_SECONDS[unit] for number, unit in parts)


def pod_templates(manifest: Manifest) -> Iterator[PodTemplate]:
    document = manifest.document
    kind = manifest.kind
    if kind == "Pod":
        template = {"metadata": mapping(document, "metadata"), "spec": mapping(document, "spec")}
    elif kind in WORKLOAD_KINDS:
        template = mapping(mapping(document, "spec"), "template")
    elif kind == "CronJob":
        template = mapping(mapping(mapping(mapping(document, "spec"), "jobTemplate"), "spec"), "template")
    else:
        return
    labels = mapping(mapping(template, "metadata"), "labels")
    yield PodTemplate(manifest, {str(k): str(v) for k, v in labels.items()}, mapping(template, "spec"))


def all_containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(key, []) or []:
            yield key, container


def check_quantities(pod: PodTemplate) -> None:
    for key, container in all_containers(pod.spec):
        name = f"{key[:-1]} {container.get('name')}"
        resources = container.get("resources", {}) or {}
        parsed: dict[str, dict[str, float]] = {}
        for section in ("requests", "limits"):
            for resource, value in (resources.get(section, {}) or {}).items():
                number = parse_quantity(value)
                if number is None:
                    pod.report(
                        f"{name}: {section}.{resource} {value!r} is not a valid quantity "
                        "(examples: 250m, 1, 512Mi, 2Gi)"
                    )
                else:
                    parsed.setdefault(section, {})[resource] = number
        for resource, request in parsed.get("requests", {}).items():
            limit = parsed.get("limits", {}).get(resource)
            if limit is not None and request > limit:
                pod.report(
                    f"{name}: requests.{resource} {resources['requests'][resource]!r} is above "
                    f"limits.{resource} {resources['limits'][resource]!r}"
                )
    for volume in pod.spec.get("volumes", []) or []:
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and parse_quantity(size) is None:
            pod.report(f"volume {volume.get('name')}: emptyDir.sizeLimit {size!r} is not a valid quantity")


def check_volumes(pod: PodTemplate) -> None:
    volumes = [volume.get("name") for volume in pod.spec.get("volumes", []) or []]
    for duplicate in sorted({name for name in volumes if volumes.count(name) > 1}):
        pod.report(f"volume name {duplicate!r} is defined more than once")
    defined = set(volumes)

    for key, container in all_containers(pod.spec):
        name = f"{key[:-1]} {container.get('name')}"
        privileged = bool((container.get("securityContext") or {}).get("privileged"))
        env_names = {env.get("name") for env in container.get("env", []) or []}
        paths: list[str] = []
        for mount in container.get("volumeMounts", []) or []:
            volume, path = mount.get("name"), mount.get("mountPath")
            paths.append(path)
            if volume not in defined:
                pod.report(
                    f"{name}: volumeMount {volume!r} at {path} has no matching volume; "
                    f"define it under spec.volumes (defined: {', '.join(sorted(defined)) or 'none'})"
                )
            propagation = mount.get("mountPropagation", "None")
            if propagation == "Bidirectional" and not privileged:
                pod.report(
                    f"{name}: volumeMount {volume!r} at {path} uses Bidirectional mount "
                    "propagation, which Kubernetes accepts only in a privileged container; "
                    "set securityContext.privileged: true or use HostToContainer"
                )
            for variable in re.findall(r"\$\(([^)]*)\)", mount.get("subPathExpr", "") or ""):
                if variable not in env_names:
                    pod.report(
                        f"{name}: subPathExpr of volumeMount {volume!r} uses $({variable}), "
                        "which the container's env does not define"
                    )
        for duplicate in sorted({path for path in paths if paths.count(path) > 1}):
            pod.report(f"{name}: mountPath {duplicate} is used by more than one volumeMount")


def port_number(container: dict[str, Any], port: Any) -> int | None:
    """Resolve a probe port (a number or a containerPort name) to a number."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []) or []:
        if declared.get("name") == port:
            return int(declared.get("containerPort"))
    return None


def check_probes(pod: PodTemplate) -> None:
    for key, container in all_containers(pod.spec):
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(probe_name) or {}
            for action in ("httpGet", "tcpSocket", "grpc"):
                port = (probe.get(action) or {}).get("port")
                if port is not None and port_number(container, port) is None:
                    pod.report(
                        f"{key[:-1]} {container.get('name')}: {probe_name} uses port {port!r}, "
                        "which is not a containerPort name of the container"
                    )


def dualfs_mount_arguments(container: dict[str, Any]) -> list[str] | None:
    """Return the arguments after `dualfs mount`, or None when the container runs something else."""
    words = [str(word) for word in (container.get("command") or []) + (container.get("args") or [])]
    if not words or not (words[0].endswith("dualfs") or "dualfs" in str(container.get("image", ""))):
        return None
    if "mount" not in words:
        return None
    return words[words.index("mount") + 1 :]


def option_values(arguments: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split `dualfs mount` arguments into options and positional arguments."""
    # Boolean flags of `dualfs mount`. Every --no-* option is a flag too.
    flags = {"--allow-other", "--hydrate"}
    options: dict[str, str] = {}
    positional: list[str] = []
    index = 0
    while index < len(arguments):
        word = arguments[index]
        if word.startswith("--") and "=" in word:
            option, value = word.split("=", 1)
            options[option] = value
        elif (
            word.startswith("--")
            and word not in flags
            and not word.startswith("--no-")
            and index + 1 < len(arguments)
        ):
            options[word] = arguments[index + 1]
            index += 1
        elif word.startswith("--"):
            options[word] = ""
        else:
            positional.append(word)
        index += 1
    return options, positional


def covering_mount(container: dict[str, Any], path: str) -> dict[str, Any] | None:
    """Return the volumeMount whose mountPath is path or its nearest ancestor."""
    best = None
    for mount in container.get("volumeMounts", []) or []:
        mount_path = str(mount.get("mountPath", "")).rstrip("/") or "/"
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            if best is None or len(mount_path) > len(str(best.get("mountPath"))):
                best = mount
    return best


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_dualfs_daemons(pod: PodTemplate) -> None:
    grace = pod.spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    for key, container in all_containers(pod.spec):
        arguments = dualfs_mount_arguments(container)
        if arguments is None:
            continue
        name = f"{key[:-1]} {container.get('name')}"
        options, positional = option_values(arguments)
        if not (container.get("securityContext") or {}).get("privileged"):
            pod.report(
                f"{name}: runs `dualfs mount` without securityContext.privileged: true; "
                "mount(2) and Bidirectional propagation need it"
            )

        if len(positional) != 1:
            pod.report(f"{name}: `dualfs mount` needs exactly one MOUNTPOINT argument, got {positional}")
        else:
            mount = covering_mount(container, positional[0])
            if mount is None or mount.get("mountPropagation") != "Bidirectional":
                pod.report(
                    f"{name}: the mount point {positional[0]} is not on a volumeMount with "
                    "Bidirectional propagation, so no other container or the host sees the mount"
                )
        for option in ("--local", "--remote"):
            if option not in options:
                pod.report(f"{name}: `dualfs mount` has no {option} DIR")
            elif covering_mount(container, options[option]) is None:
                pod.report(
                    f"{name}: {option} {options[option]} is not on a volumeMount, so the tree "
                    "would live in the container's own file system"
                )

        drain_text = options.get("--drain-timeout", DUALFS_DEFAULTS["--drain-timeout"])
        drain = parse_duration(drain_text)
        if drain is None:
            pod.report(f"{name}: --drain-timeout {drain_text!r} is not a duration (examples: 60s, 2m)")
        elif grace <= drain:
            pod.report(
                f"{name}: terminationGracePeriodSeconds {grace} is not longer than --drain-timeout "
                f"{drain_text}, so the kubelet kills the daemon before it drains its queue"
            )

        address = options.get("--metrics-addr", DUALFS_DEFAULTS["--metrics-addr"])
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            http = ((container.get(probe_name) or {}).get("httpGet")) or {}
            if not http:
                continue
            if address == "off":
                pod.report(f"{name}: {probe_name} uses HTTP but --metrics-addr is off")
            elif is_loopback(address):
                pod.report(
                    f"{name}: {probe_name} connects to the pod IP, but --metrics-addr {address} "
                    "listens on loopback only; use 0.0.0.0:PORT"
                )
            elif port_number(container, http.get("port")) != int(address.rsplit(":", 1)[1]):
                pod.report(
                    f"{name}: {probe_name} port {http.get('port')!r} is not the port of "
                    f"--metrics-addr {address}"
                )


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = [str(value) for value in expression.get("values") or []]
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def check_pod_monitors(manifests: list[Manifest], pods: list[PodTemplate], findings: list[Finding]) -> None:
    if not pods:
        return  # A base without workloads has nothing to scrape yet.
    for monitor in (m for m in manifests if m.kind == "PodMonitor"):
        spec = mapping(monitor.document, "spec")
        namespaces = spec.get("namespaceSelector") or {}
        selected = [
            pod
            for pod in pods
            if selector_matches(spec.get("selector") or {}, pod.labels)
            and (
                namespaces.get("any")
                or pod.manifest.namespace in (namespaces.get("matchNames") or [monitor.namespace])
            )
        ]
        if not selected:
            findings.append(monitor.finding("selects no pod template in these manifests"))
        for endpoint in spec.get("podMetricsEndpoints") or []:
            port = endpoint.get("port")
            for pod in selected:
                names = {p.get("name") for _, c in all_containers(pod.spec) for p in c.get("ports", []) or []}
                if port not in names:
                    findings.append(
                        monitor.finding(f"port {port!r} is not a container port name of {pod.manifest.label}")
                    )


def check_efs_volumes(manifests: list[Manifest], reject_placeholders: bool, findings: list[Finding]) -> None:
    claims = {(m.namespace, m.name): m for m in manifests if m.kind == "PersistentVolumeClaim"}
    volumes = {m.name: m for m in manifests if m.kind == "PersistentVolume"}
    for volume in volumes.values():
        spec = mapping(volume.document, "spec")
        capacity = (spec.get("capacity") or {}).get("storage")
        if capacity is not None and parse_quantity(capacity) is None:
            findings.append(volume.finding(f"capacity.storage {capacity!r} is not a valid quantity"))
        csi = spec.get("csi") or {}
        if csi.get("driver") != "efs.csi.aws.com":
            continue
        handle = str(csi.get("volumeHandle", ""))
        match = EFS_HANDLE.match(handle)
        if not match:
            findings.append(
                volume.finding(
                    f"volumeHandle {handle!r} is not FILE_SYSTEM_ID[:PATH[:ACCESS_POINT_ID]] "
                    "(example: fs-0123456789abcdef0::fsap-0123456789abcdef0)"
                )
            )
        else:
            options = spec.get("mountOptions") or []
            if "tls" not in options:
                findings.append(
                    volume.finding("mountOptions lacks tls; the file system policy denies NFS without TLS")
                )
            if match.group("ap") and "iam" not in options:
                findings.append(
                    volume.finding(
                        "mounts an access point without the iam mount option, so the file system "
                        "policy sees an anonymous client"
                    )
                )
            if reject_placeholders:
                for part in ("fs", "ap"):
                    if match.group(part) and PLACEHOLDER_ID.match(match.group(part)):
                        findings.append(
                            volume.finding(
                                f"volumeHandle {handle} still holds the placeholder "
                                f"{match.group(part)}; set the id in the overlay"
                            )
                        )
        claim_ref = spec.get("claimRef") or {}
        if claim_ref and (claim_ref.get("namespace"), claim_ref.get("name")) not in claims:
            findings.append(
                volume.finding(
                    f"claimRef {claim_ref.get('namespace')}/{claim_ref.get('name')} "
                    "names no PersistentVolumeClaim in these manifests"
                )
            )
    for claim in claims.values():
        spec = mapping(claim.document, "spec")
        request = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
        if request is not None and parse_quantity(request) is None:
            findings.append(claim.finding(f"requests.storage {request!r} is not a valid quantity"))
        name = spec.get("volumeName")
        if name and name not in volumes:
            findings.append(
                claim.finding(f"volumeName {name!r} names no PersistentVolume in these manifests")
            )


def check_pod_references(manifests: list[Manifest], pods: list[PodTemplate], findings: list[Finding]) -> None:
    accounts = {(m.namespace, m.name) for m in manifests if m.kind == "ServiceAccount"}
    claims = {(m.namespace, m.name) for m in manifests if m.kind == "PersistentVolumeClaim"}
    for pod in pods:
        namespace = pod.manifest.namespace
        account = pod.spec.get("serviceAccountName")
        if accounts and account and account != "default" and (namespace, account) not in accounts:
            pod.report(f"serviceAccountName {account!r} names no ServiceAccount in namespace {namespace}")
        for volume in pod.spec.get("volumes", []) or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claims and claim and (namespace, claim) not in claims:
                pod.report(
                    f"volume {volume.get('name')} uses claim {claim!r}, which is not in namespace {namespace}"
                )


def check_service_accounts(
    manifests: list[Manifest], reject_placeholders: bool, findings: list[Finding]
) -> None:
    for account in (m for m in manifests if m.kind == "ServiceAccount"):
        role = mapping(mapping(account.document, "metadata"), "annotations").get("eks.amazonaws.com/role-arn")
        if role is None:
            continue
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$", str(role)):
            findings.append(account.finding(f"eks.amazonaws.com/role-arn {role!r} is not an IAM role ARN"))
        elif reject_placeholders and f"::{PLACEHOLDER_ACCOUNT}:" in str(role):
            findings.append(
                account.finding(
                    f"eks.amazonaws.com/role-arn {role} still holds the placeholder account; "
                    "set the role in the overlay"
                )
            )


def check_prometheus_rules(manifests: list[Manifest], findings: list[Finding]) -> None:
    rules = [m for m in manifests if m.kind == "PrometheusRule"]
    if rules and promql_parser is None:
        print("notice: promql_parser is not installed; PromQL expressions are not parsed", file=sys.stderr)
        return
    for manifest in rules:
        for group in mapping(manifest.document, "spec").get("groups", []) or []:
            for rule in group.get("rules", []) or []:
                name = rule.get("alert") or rule.get("record")
                try:
                    promql_parser.parse(str(rule.get("expr", "")))
                except ValueError as err:
                    findings.append(manifest.finding(f"rule {name}: invalid PromQL: {err}"))
                if rule.get("for") is not None and parse_duration(str(rule["for"])) is None:
                    findings.append(manifest.finding(f"rule {name}: for {rule['for']!r} is not a duration"))


def check(manifests: list[Manifest], reject_placeholders: bool) -> list[Finding]:
    findings: list[Finding] = []
    pods = [pod for manifest in manifests for pod in pod_templates(manifest)]
    for pod in pods:
        check_volumes(pod)
        check_quantities(pod)
        check_probes(pod)
        check_dualfs_daemons(pod)
    check_pod_references(manifests, pods, findings)
    check_pod_monitors(manifests, pods, findings)
    check_efs_volumes(manifests, reject_placeholders, findings)
    check_service_accounts(manifests, reject_placeholders, findings)
    check_prometheus_rules(manifests, findings)
    for pod in pods:
        findings.extend(pod.findings)
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files", nargs="+", help="YAML files with one or more manifests, or - for standard input"
    )
    parser.add_argument(
        "--reject-placeholders",
        action="store_true",
        help="fail on the placeholder ids and account of the base (use on rendered overlays)",
    )
    args = parser.parse_args()

    try:
        manifests = load_manifests(args.files)
    except (OSError, yaml.YAMLError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    findings = check(manifests, args.reject_placeholders)
    for finding in findings:
        print(finding)
    problems = "problem" if len(findings) == 1 else "problems"
    print(f"{len(manifests)} manifests checked, {len(findings)} {problems} found")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
