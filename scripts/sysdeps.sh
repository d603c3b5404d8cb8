#!/usr/bin/env bash
# Installs the system packages the test suite drives for real, only when missing.
# Runs `apt-get update` at most once; needs root (CI and dev machines run as root).
set -euo pipefail
need=()
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v gpg >/dev/null || need+=(gnupg)
command -v age >/dev/null || need+=(age)  # age secrets: the tests encrypt with the real CLI
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
# PostgreSQL: the tests start their own throwaway server (initdb/pg_ctl), no system service
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  need+=(postgresql)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing system packages: ${need[*]} (install them, or run as root)" >&2
    exit 1
  fi
  echo "installing system packages: ${need[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
