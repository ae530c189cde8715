#!/usr/bin/env bash
# scripts/plot.py turns trainer output and a fidelity CSV into non-empty PNG files, and refuses
# bad input with a one-line message and a non-zero status. Usage: plot_command.sh SOURCE_DIR
set -euo pipefail
plot="$1/scripts/plot.py"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for run in bp fenbp; do
  for epoch in 1 2 3; do
    printf '{"epoch":%d,"method":"%s","train_error":0.%d,"test_error":0.%d}\n' \
      "$epoch" "$run" "$((5 - epoch))" "$((6 - epoch))"
  done >"$work/$run.jsonl"
  echo '{"summary":true}' >>"$work/$run.jsonl"
done
printf 'method,parameter,value,layer,cosine,relative_error,iterations,unconverged,bp_steps\n' >"$work/fidelity.csv"
printf 'fenbp,beta,%s,1,%s,%s,0,0,1\n' 0.01 0.999 0.01 0.1 0.98 0.1 1 0.7 0.8 >>"$work/fidelity.csv"
printf 'zil,-,0,1,1,0,3,0,2\n' >>"$work/fidelity.csv"

is_png() {  # non-empty and starting with the PNG signature
  [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] &&
    [ "$(stat -c %s "$1")" -gt 2000 ]
}
python3 "$plot" curves "$work/curves.png" "$work/bp.jsonl" "$work/fenbp.jsonl" --title test
is_png "$work/curves.png" || { echo "curves.png is not a PNG"; exit 1; }
python3 "$plot" fidelity "$work/fidelity.png" "$work/fidelity.csv"
is_png "$work/fidelity.png" || { echo "fidelity.png is not a PNG"; exit 1; }

echo 'not json' >"$work/bad.jsonl"
for bad in "curves $work/x.png $work/bad.jsonl" "curves $work/x.png $work/missing.jsonl" \
           "fidelity $work/x.png $work/bp.jsonl"; do
  if message="$(python3 "$plot" $bad 2>&1)"; then
    echo "accepted bad input: $bad"; exit 1
  fi
  [ "$(printf '%s\n' "$message" | wc -l)" -eq 1 ] || { echo "not one line: $message"; exit 1; }
  [ ! -e "$work/x.png" ] || { echo "left a file behind for: $bad"; exit 1; }
done
echo "plot command: PNGs written, bad input refused"
