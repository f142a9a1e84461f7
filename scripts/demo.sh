#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job on the embedded gallery (no services): split a labelled
# manifest by photographer, index the gallery part, locate the query part and score it.
# Usage: scripts/demo.sh [MANIFEST.csv]   (default: the im2gps3k-dev photos beside this repo)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MANIFEST=${1:-../shared/data/im2gps3k-dev/manifest.csv}
export GEOLOC_HOME=${GEOLOC_HOME:-$PWD/.geoloc-home}
GEOLOC=.venv/bin/geoloc
SPLIT="$GEOLOC_HOME/demo-split"
$GEOLOC split "$MANIFEST" --by photographer --query-fraction 0.2 --seed 0 --out "$SPLIT"
$GEOLOC index "$SPLIT/gallery.csv" --collection demo
$GEOLOC locate "$SPLIT/queries.csv" | tail -n 25
