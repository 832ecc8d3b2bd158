#!/usr/bin/env bash
# Exercism-test-runner-style entry point: bin/run.sh SLUG INPUT_DIR OUTPUT_DIR
#   SLUG       a lab: "lab01", "01" or "lab01_database_pool"; "all" grades every lab
#   INPUT_DIR  the learner's repository (a folder with labs/)
#   OUTPUT_DIR where results.json (Exercism v3 + points) and junit.xml are written
# Exit code 0 whenever a results.json was written, whatever the score (as Exercism's runners do).
set -euo pipefail
if [ "$#" -ne 3 ]; then
  echo "usage: bin/run.sh SLUG INPUT_DIR OUTPUT_DIR" >&2
  exit 2
fi
slug="$1"
input="${2%/}"
output="${3%/}"
here="$(cd "$(dirname "$0")/.." && pwd)"
pglab="$here/.venv/bin/pglab"
[ -x "$pglab" ] || pglab="pglab"
lab=()
if [ "$slug" != "all" ]; then
  id="${slug#lab}"
  lab=(--lab "${id%%_*}")
fi
mkdir -p "$output"
cd "$here"
"$pglab" grade --submission "$input" "${lab[@]}" --out "$output"
