#!/usr/bin/env bash
# The browser tests drive Debian's Chromium through Playwright (Playwright cannot
# download its own browsers here). Install it when missing and we are allowed to.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "[chromium] installing Debian's chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[chromium] install failed; browser tests will fail with instructions"
else
  echo "[chromium] /usr/bin/chromium is missing: run 'sudo apt-get install -y chromium' (browser tests need it)"
fi
exit 0
