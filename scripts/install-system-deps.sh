#!/usr/bin/env bash
# Debian packages the tests, the demo and the benchmarks run for real (no mocks):
# the CNCF distribution registry, skopeo, dockerd and podman (Docker Engine API path),
# htpasswd for basic auth, openssl, git.
#
# Optional: kubectl, which only a few tests use (they check the served Kubernetes API and skip
# with a reason when it is absent). Debian ships it as `kubernetes-client`; where no such
# package exists (Debian 13, Ubuntu) it is left out with a note. REQUIRE_KUBECTL=1 (CI) makes
# a missing kubectl an error instead.
set -euo pipefail
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v podman >/dev/null || need+=(podman)
command -v dockerd >/dev/null || need+=(docker.io)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v openssl >/dev/null || need+=(openssl)
command -v git >/dev/null || need+=(git)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
want_kubectl=0
command -v kubectl >/dev/null || want_kubectl=1
# without REQUIRE_KUBECTL, a missing kubectl alone is no reason to run apt-get
if [ ${#need[@]} -eq 0 ] && { [ "$want_kubectl" -eq 0 ] || [ "${REQUIRE_KUBECTL:-0}" != 1 ]; }; then
  [ "$want_kubectl" -eq 1 ] && echo "note: kubectl not found: the tests that use it will be skipped" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}" >&2
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$want_kubectl" -eq 1 ]; then
  # `apt-cache show` succeeds only for a package that exists (a virtual one has no record)
  for package in kubectl kubernetes-client; do
    if apt-cache show "$package" >/dev/null 2>&1; then
      echo "installing Debian package (optional): $package" >&2
      $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null || true
      break
    fi
  done
  if ! command -v kubectl >/dev/null; then
    if [ "${REQUIRE_KUBECTL:-0}" = 1 ]; then
      echo "error: kubectl is required here (REQUIRE_KUBECTL=1) but neither kubectl nor kubernetes-client" \
           "can be installed: install kubectl (https://kubernetes.io/docs/tasks/tools/) and run again" >&2
      exit 1
    fi
    echo "note: kubectl could not be installed (no kubectl or kubernetes-client package here): the tests" \
         "that use it will be skipped" >&2
  fi
fi
