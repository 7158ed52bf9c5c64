# shellcheck shell=bash
# What the platform scripts share: the values prenv init wrote from prenv.toml (platform.env), the
# --dry-run switch, and creating namespaces and Secrets so that running a script twice, or before
# or after another one, changes nothing the second time. Sourced, not run.

PRENV_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/platform.env
. "$PRENV_SCRIPTS/platform.env"

dry_run=false

# Runs a command, or prints it with --dry-run.
run() {
  if "$dry_run"; then
    printf '+ %s\n' "$*"
  else
    "$@"
  fi
}

# Applies what a command prints (a manifest) with server-side apply, which creates or updates and
# keeps no copy of the object in an annotation (a Secret's values would be in it otherwise).
apply_output() {
  if "$dry_run"; then
    printf '+ %s | kubectl apply --server-side --field-manager=prenv-scripts -f -\n' "$*"
  else
    "$@" | kubectl apply --server-side --field-manager=prenv-scripts -f -
  fi
}

# Creates the namespace unless it exists; Flux or Argo CD adopts it later from git.
ensure_namespace() {
  apply_output kubectl create namespace "$1" --dry-run=client -o yaml
}

# Creates or updates Secret $2 in namespace $1 from KEY=FILE pairs; the values only ever pass
# through files, never a command line or the output.
put_secret() {
  local namespace="$1" name="$2"
  shift 2
  local from=()
  for pair in "$@"; do
    from+=("--from-file=$pair")
  done
  ensure_namespace "$namespace"
  apply_output kubectl -n "$namespace" create secret generic "$name" "${from[@]}" --dry-run=client -o yaml
}

# A private directory for secret values (SECRET_DIR), removed when the script ends.
make_secret_dir() {
  SECRET_DIR="$(mktemp -d)"
  chmod 700 "$SECRET_DIR"
  trap 'rm -rf "$SECRET_DIR"' EXIT
}

# The value of environment variable $1, else asked for (hidden) on a terminal; empty otherwise.
value_of() {
  local value="${!1:-}"
  if [ -z "$value" ] && [ -t 0 ] && ! "$dry_run"; then
    read -rsp "$2: " value
    echo >&2
  fi
  printf '%s' "$value"
}

# 32 random bytes as hex, from the kernel's generator.
random_hex() {
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# Creates the SSH deploy key $1 unless it exists; prints nothing secret.
ensure_deploy_key() {
  if [ ! -f "$1" ]; then
    run mkdir -p "$(dirname "$1")"
    run ssh-keygen -q -t ed25519 -N "" -C "prenv-preview-cluster" -f "$1"
    return 0
  fi
  return 1
}

die() {
  echo "$*" >&2
  exit 2
}
