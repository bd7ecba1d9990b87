#!/usr/bin/env bash
# Look at the built docs as a reader would: build the site (mkdocs --strict), serve it on localhost, and take a
# screenshot of a page with headless Chromium. Installs Debian's chromium when it is missing (run as root).
# Usage: tools/screenshot_docs.sh [PAGE] [OUT.png]   e.g. tools/screenshot_docs.sh architecture/ /tmp/arch.png
set -euo pipefail
cd "$(dirname "$0")/.."
page="${1:-}"
out="${2:-site-screenshot.png}"
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
make docs >/dev/null
port=8765
.venv/bin/python -m http.server "$port" --bind 127.0.0.1 --directory site >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 1
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1280,1600 \
    --screenshot="$(realpath -m "$out")" "http://127.0.0.1:$port/$page" 2>/dev/null
rm -rf "$profile"
echo "screenshot of /$page in $out"
