#!/usr/bin/env bash
# Installs what the tests need beyond Python packages, when missing and possible:
# Debian's chromium + chromium-driver for the browser tests (root + apt only).
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests (apt-get)..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; browser tests will fail" >&2
else
  echo "warning: chromium not found and cannot be installed here (need root + apt-get); browser tests will fail" >&2
fi
