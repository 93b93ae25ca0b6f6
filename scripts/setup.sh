#!/usr/bin/env bash
# Installs what building and testing Pleiades needs on a fresh Debian machine with Rust, when it
# is missing. Safe to run again; prints what it does.
set -euo pipefail

# libclang: RocksDB bindings (bindgen); curl: the demo; prometheus: the scrape test; etcd-server:
# the peer `pleiades bench compare` measures against; protobuf-compiler and libprotobuf-dev (its
# well-known types): the etcd-client crate's build
apt_packages=(libclang-dev curl prometheus etcd-server protobuf-compiler libprotobuf-dev)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "setup: adding rust component $component"
    rustup component add "$component"
  fi
done

# cargo-deny checks licences, bans and sources against deny.toml (scripts/test.sh). Pinned, so a
# newer release cannot need a newer rustc; built once (minutes on two cores) in cargo's own
# temporary directory, so it never holds the workspace's build lock.
deny_version=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
  echo "setup: installing cargo-deny $deny_version (cargo install, compiles once)"
  env -u CARGO_TARGET_DIR cargo install --locked --quiet "cargo-deny@$deny_version" </dev/null
fi
# Every crate in Cargo.lock, for every platform: `cargo deny --offline` reads them all, while a
# build only fetches those of its own target.
cargo fetch --locked --quiet </dev/null

# kubernetes-validate checks rendered Helm manifests offline (scripts/validate-manifests.py).
if ! python3 -c "import kubernetes_validate, jsonschema, yaml" >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate </dev/null
fi
# helm (v4) and kubectl, cached outside the clone (the chart tests find them there).
get_helm="$(dirname "$0")/../../shared/tools/get-helm.sh"
if [ -f "$get_helm" ]; then
  bash "$get_helm" >/dev/null
else
  echo "setup: $get_helm not found; the chart tests need helm on PATH or in \$HELM" >&2
fi

# One target directory outside the clone, so CI runs and fresh clones reuse the compiled deps.
echo "${CARGO_TARGET_DIR:-$HOME/.cache/pleiades-target}"
