#!/usr/bin/env bash
# Installs the command-line tools that the tests/test_deploy_*.py files run, when they are missing:
#   promtool, prometheus  (Debian package `prometheus`)
# Needs root and apt-get; otherwise it says what to install and leaves it to you (the tests that need
# a missing tool then skip, or fail when CI=true). The package's own service is not needed: the tests
# start their own server on a free loopback port.
set -euo pipefail

missing=()
for tool in promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: missing ${missing[*]}; install the Debian package as root: apt-get install prometheus" >&2
    exit 0
fi

echo "install-tools: installing the Debian package prometheus (for ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends prometheus >/dev/null
for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "install-tools: $tool still missing after the install" >&2; exit 1; }
done
