#!/usr/bin/env bash
# Validate the deployment files offline: YAML lint, kustomize rendering, Kubernetes schema
# validation, the semantic checks of check_manifests.py and their failing fixtures, checkov on
# the manifests and the Terraform, and terraform fmt and validate.
#
# Usage: bash deploy/validate.sh   (from any directory). The exit status is non-zero when any
# check fails.
#
# Environment:
#   DUALFS_DEPLOY_VENV  virtual environment for the Python tools
#                       (default: ${XDG_CACHE_HOME:-$HOME/.cache}/dualfs-deploy-venv)
#   TF_PLUGIN_MIRROR    a Terraform provider mirror directory (packed or unpacked layout) that
#                       contains the pinned hashicorp/aws version. Without it, Terraform's implied
#                       local mirror directories are searched
#   KUBERNETES_VERSION  Kubernetes version of the schemas (default: 1.31.0)
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$deploy_dir")"
cd "$repo_dir"
# Keep __pycache__ out of the repository.
export PYTHONDONTWRITEBYTECODE=1

venv="${DUALFS_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dualfs-deploy-venv}"
kubernetes_version="${KUBERNETES_VERSION:-1.31.0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/dualfs-validate.XXXXXX")"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
skipped=0
failed_steps=()

# Run one step in a subshell with errexit on, so a failing command ends the step but not the
# script, and every step reports.
step() {
    local name="$1"
    shift
    local started=$SECONDS
    echo "==> $name"
    set +e
    (
        set -euo pipefail
        "$@"
    )
    local status=$?
    set -e
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        echo "    ok: $name ($((SECONDS - started)) s)"
    elif [ "$status" -eq "$skip_status" ]; then
        skipped=$((skipped + 1))
    else
        failed=$((failed + 1))
        failed_steps+=("$name")
        echo "    FAILED: $name ($((SECONDS - started)) s)"
    fi
}

# Mark the current step as skipped. Its subshell exits with 77, the status that automake test
# harnesses use for a skip, and no tool here uses for failure (terraform fmt -check exits 3).
skip_status=77
skip() {
    echo "    skipped: $*"
    exit "$skip_status"
}

setup_venv() {
    local stamp="$venv/.dualfs-requirements.sha256"
    local wanted
    wanted="$(cat "$deploy_dir/requirements.txt" "$deploy_dir/constraints.txt" | sha256sum | cut -d' ' -f1)"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
        echo "    using $venv"
        return 0
    fi
    echo "    installing the pinned tools into $venv (checkov takes about 400 MB)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r "$deploy_dir/requirements.txt" -c "$deploy_dir/constraints.txt"
    echo "$wanted" > "$stamp"
}

yaml_lint() {
    "$venv/bin/yamllint" --strict -c "$deploy_dir/.yamllint" "$deploy_dir"
}

kustomize_build() {
    local dir="$1" output="$2"
    if command -v kubectl > /dev/null; then
        kubectl kustomize "$dir" > "$output"
    elif command -v kustomize > /dev/null; then
        kustomize build "$dir" > "$output"
    else
        echo "neither kubectl nor kustomize is installed; install kubectl (it contains kustomize)" >&2
        return 1
    fi
}

render_all() {
    mkdir -p "$work/rendered"
    kustomize_build "$deploy_dir/k8s/base" "$work/rendered/base.yaml"
    echo "    base: $(grep -c '^kind:' "$work/rendered/base.yaml") resources"
    local overlay name
    for overlay in "$deploy_dir"/k8s/overlays/*/; do
        name="$(basename "$overlay")"
        kustomize_build "$overlay" "$work/rendered/$name.yaml"
        echo "    $name: $(grep -c '^kind:' "$work/rendered/$name.yaml") resources"
    done
}

schema_validate() {
    # Guard: strict validation must reject an unknown field, or its passes mean nothing.
    printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata:' '  name: guard' '  unknownField: 1' \
        > "$work/strict-guard.yaml"
    if "$venv/bin/kubernetes-validate" -k "$kubernetes_version" --strict --quiet \
        "$work/strict-guard.yaml" > /dev/null 2>&1; then
        echo "kubernetes-validate --strict accepted an unknown field" >&2
        return 1
    fi
    # Custom resources (PodMonitor, PrometheusRule) have no schema here, and check_manifests.py
    # checks them. Any other kind without a schema, such as a Deployment with a mistyped
    # apiVersion, is only a warning to kubernetes-validate, so it fails the step here.
    "$venv/bin/kubernetes-validate" -k "$kubernetes_version" --strict --quiet "$work"/rendered/*.yaml \
        2>&1 | tee "$work/schema.log"
    if grep "Couldn't find schema" "$work/schema.log" \
        | grep -v -E "for kind (PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 "; then
        echo "the resources above have no schema; fix their kind or apiVersion" >&2
        return 1
    fi
}

# The base keeps placeholder ids, which every overlay must replace.
semantic_check() {
    local file status=0
    "$venv/bin/python" "$deploy_dir/check_manifests.py" "$work/rendered/base.yaml" || status=1
    for file in "$work"/rendered/*.yaml; do
        [ "$(basename "$file")" = base.yaml ] && continue
        "$venv/bin/python" "$deploy_dir/check_manifests.py" --reject-placeholders "$file" || status=1
    done
    return "$status"
}

semantic_check_unit_tests() {
    (cd "$deploy_dir" && "$venv/bin/python" -m unittest test_check_manifests)
}

# Each fixture under testdata/ contains one mistake that the schema accepts and
# check_manifests.py must reject. Its "# expect:" line is the message the rejection must
# contain, and an optional "# args:" line gives extra options.
semantic_check_fixtures() {
    local fixture expected args output status count=0 errors=0
    for fixture in "$deploy_dir"/testdata/*.yaml; do
        count=$((count + 1))
        expected="$(sed -n 's/^# expect: //p' "$fixture" | head -n 1)"
        args="$(sed -n 's/^# args: //p' "$fixture" | head -n 1)"
        if [ -z "$expected" ]; then
            echo "    $fixture has no '# expect:' line" >&2
            errors=$((errors + 1))
            continue
        fi
        if ! "$venv/bin/kubernetes-validate" -k "$kubernetes_version" --strict --quiet --no-warn \
            "$fixture" > "$work/fixture-schema.log" 2>&1; then
            echo "    $(basename "$fixture"): the schema already rejects it, so it does not test check_manifests.py:" >&2
            cat "$work/fixture-schema.log" >&2
            errors=$((errors + 1))
        fi
        set +e
        # shellcheck disable=SC2086 # args contains zero or more options, split on spaces
        output="$("$venv/bin/python" "$deploy_dir/check_manifests.py" $args "$fixture" 2>&1)"
        status=$?
        set -e
        if [ "$status" -ne 1 ]; then
            echo "    $(basename "$fixture"): expected exit status 1, got $status:" >&2
            echo "$output" >&2
            errors=$((errors + 1))
        elif ! grep -qF -- "$expected" <<< "$output"; then
            echo "    $(basename "$fixture"): the output lacks \"$expected\":" >&2
            echo "$output" >&2
            errors=$((errors + 1))
        elif ! grep -q ', 1 problem found$' <<< "$output"; then
            echo "    $(basename "$fixture"): expected exactly one problem:" >&2
            echo "$output" >&2
            errors=$((errors + 1))
        else
            echo "    rejected as expected: $(basename "$fixture")"
        fi
    done
    if [ "$count" -eq 0 ]; then
        echo "no fixtures found under $deploy_dir/testdata" >&2
        return 1
    fi
    [ "$errors" -eq 0 ]
}

checkov_kubernetes() {
    mkdir -p "$work/checkov-k8s"
    cp "$work"/rendered/*.yaml "$work/checkov-k8s/"
    "$venv/bin/checkov" --directory "$work/checkov-k8s" --framework kubernetes \
        --skip-download --compact --quiet
}

checkov_terraform() {
    "$venv/bin/checkov" --directory "$deploy_dir/terraform" --framework terraform \
        --skip-download --compact --quiet
}

# Terraform never contacts AWS or a registry here: init reads the provider from a local mirror
# only, and no step runs plan or apply.
terraform_fmt() {
    if ! command -v terraform > /dev/null; then
        skip "terraform is not installed"
    fi
    TF_CLI_CONFIG_FILE=/dev/null terraform fmt -check -recursive -diff "$deploy_dir/terraform"
}

# Print the first directory that contains the provider version pinned by the example, in the
# packed (.zip) or unpacked layout.
find_provider_mirror() {
    local version="$1" candidate
    local candidates=(
        "${TF_PLUGIN_MIRROR:-}"
        "$HOME/.terraform.d/plugins"
        "${XDG_DATA_HOME:-$HOME/.local/share}/terraform/plugins"
        /usr/local/share/terraform/plugins
        /usr/share/terraform/plugins
    )
    for candidate in "${candidates[@]}"; do
        [ -n "$candidate" ] || continue
        local provider_dir="$candidate/registry.terraform.io/hashicorp/aws"
        if [ -d "$provider_dir/$version" ] || compgen -G "$provider_dir/terraform-provider-aws_${version}_*.zip" > /dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

terraform_validate() {
    if ! command -v terraform > /dev/null; then
        skip "terraform is not installed"
    fi
    local version mirror dir
    version="$(sed -n 's/^ *version *= *"\([0-9.]*\)"$/\1/p' "$deploy_dir/terraform/examples/reference/versions.tf")"
    if [ -z "$version" ]; then
        echo "cannot read the pinned aws provider version from examples/reference/versions.tf" >&2
        return 1
    fi
    if ! mirror="$(find_provider_mirror "$version")"; then
        skip "terraform provider not available offline (hashicorp/aws $version in no local mirror; set TF_PLUGIN_MIRROR)"
    fi
    echo "    provider hashicorp/aws $version from $mirror"

    cat > "$work/terraform.tfrc" << EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
}
EOF
    # A scratch copy keeps .terraform/ and the lock files out of the repository.
    cp -r "$deploy_dir/terraform" "$work/terraform"
    for dir in modules/central modules/satellite examples/reference; do
        echo "    $dir"
        (
            cd "$work/terraform/$dir"
            export TF_CLI_CONFIG_FILE="$work/terraform.tfrc" TF_IN_AUTOMATION=1 TF_INPUT=0
            terraform init -backend=false -input=false -no-color > "$work/init.log" 2>&1 \
                || { cat "$work/init.log" >&2; exit 1; }
            terraform validate -no-color
        )
    done
}

started=$SECONDS
step "Python tools (pinned, in a virtual environment)" setup_venv
if [ "$failed" -ne 0 ]; then
    echo "validate: the Python tools could not be installed; nothing else can run" >&2
    exit 1
fi
step "yamllint" yaml_lint
failed_before_render=$failed
step "kustomize build of the base and every overlay" render_all
if [ "$failed" -eq "$failed_before_render" ]; then
    step "kubernetes-validate --strict (Kubernetes $kubernetes_version)" schema_validate
    step "check_manifests.py on the rendered manifests" semantic_check
    step "checkov on the rendered manifests" checkov_kubernetes
fi
step "check_manifests.py unit tests" semantic_check_unit_tests
step "check_manifests.py rejects every fixture in testdata/" semantic_check_fixtures
step "checkov on the Terraform" checkov_terraform
step "terraform fmt -check" terraform_fmt
step "terraform init (local mirror) and validate" terraform_validate

echo "validate: $passed passed, $failed failed, $skipped skipped ($((SECONDS - started)) s)"
if [ "$failed" -ne 0 ]; then
    printf 'failed step: %s\n' "${failed_steps[@]}" >&2
    exit 1
fi
