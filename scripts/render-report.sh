#!/usr/bin/env bash
# Render the HTML reports in headless Chromium, to look at them (or to keep as CI artefacts).
#
# Makes two receipts on the built-in fixture: a clean traced run, and one with a fault injected
# into the Rust engine (`--inject-fault rope-adjacent@1`: a first divergence at position 1 and a
# layer trace that finds it). Writes `harness report` of each and `harness diff --html` of the
# two, then screenshots every page:
#   <target>/report/{clean,fault,diff}.html
#   <target>/report/{clean,fault,diff}.png        the first screen (1280x2000)
#   <target>/report/{clean,fault,diff}-full.png   the whole page (1280xHEIGHT)
# where <target> is $CARGO_TARGET_DIR or target/.
#
# Needs Debian's chromium (`apt-get install -y chromium`), or CHROMIUM=/path/to/chrome.
# Usage: scripts/render-report.sh [HEIGHT]   (HEIGHT of the full-page shots, default 6000)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/report
FULL_HEIGHT=${1:-6000}
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
if [[ -z "$CHROMIUM" ]]; then
    echo "render-report: chromium not found (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 1
fi

cd "$REPO"
cargo build -q -p harness
HARNESS=$TARGET/debug/harness
mkdir -p "$OUT"

"$HARNESS" run --quiet --trace --out "$OUT/clean.json"
"$HARNESS" run --quiet --trace --inject-fault rope-adjacent@1 --out "$OUT/fault.json"
"$HARNESS" report "$OUT/clean.json" --out "$OUT/clean.html"
"$HARNESS" report "$OUT/fault.json" --out "$OUT/fault.html"
"$HARNESS" diff "$OUT/clean.json" "$OUT/fault.json" --html "$OUT/diff.html" > "$OUT/diff.txt"

# A fresh profile each time; no background connections (the network is closed anyway).
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
shot() {
    local page=$1 png=$2 size=$3
    rm -f "$png"
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
        --user-data-dir="$PROFILE" --screenshot="$png" --window-size="$size" "file://$page" \
        > /dev/null 2> "$OUT/chromium.log"
    if [[ ! -s "$png" ]]; then
        echo "render-report: chromium wrote no $png; its log:" >&2
        cat "$OUT/chromium.log" >&2
        exit 1
    fi
    echo "screenshot: $png"
}
for page in clean fault diff; do
    shot "$OUT/$page.html" "$OUT/$page.png" 1280,2000
    shot "$OUT/$page.html" "$OUT/$page-full.png" "1280,$FULL_HEIGHT"
done
