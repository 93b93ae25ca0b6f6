#!/usr/bin/env bash
# Installs what building and testing Pleiades needs on a fresh Debian machine with Rust, when it
# is missing. Safe to run again; prints what it does.
set -euo pipefail

# libclang: RocksDB bindings (bindgen); curl: the demo; prometheus: the scrape test
apt_packages=(libclang-dev curl prometheus)
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

# One target directory outside the clone, so CI runs and fresh clones reuse the compiled deps.
echo "${CARGO_TARGET_DIR:-$HOME/.cache/pleiades-target}"
