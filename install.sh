#!/usr/bin/env bash
# Install neighbor-lt for development: the package with every extra, plus the Debian packages some parts use
# (WordNet 3.0 for the offline `wordnet` neighbor backend, headless Chromium for the Space's browser test, openssl
# for the downloader's https test certificate).
# Library users who need neither: pip install . (or -e .) plus the extras they use, e.g. ".[retrieval,plots]".
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wordnet-base chromium chromium-driver openssl >/dev/null
else
  echo "apt-get not found: install WordNet 3.0 (wordnet-base) and Chromium yourself for the wordnet backend and the browser test" >&2
fi
pip install -e ".[dev]"
