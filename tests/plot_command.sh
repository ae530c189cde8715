#!/usr/bin/env bash
# scripts/plot.py turns trainer output (JSON lines and --csv files) and a fidelity CSV into
# non-empty PNG files, labels runs by method and spacing with whole-epoch ticks, and refuses bad
# input with a one-line message, a non-zero status and no file. Usage: plot_command.sh SOURCE_DIR
set -euo pipefail
plot="$1/scripts/plot.py"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for run in bp fenbp; do
  beta=null; [ "$run" = bp ] || beta=0.01
  for epoch in 1 2 3; do
    printf '{"epoch":%d,"method":"%s","beta":%s,"train_error":0.%d,"test_error":0.%d}\n' \
      "$epoch" "$run" "$beta" "$((5 - epoch))" "$((6 - epoch))"
  done >"$work/$run.jsonl"
  echo '{"summary":true}' >>"$work/$run.jsonl"
done
cp "$work/fenbp.jsonl" "$work/fenbp-again.jsonl"  # the same label twice
# The trainer's --csv: per-layer spacings joined with ';', an empty cell where nothing was
# measured (no validation set in epoch 2).
header=epoch,method,beta,lr,train_error,validation_error,test_error,loss,seconds,samples_per_s
header+=,inner_residual,inner_energy,unconverged_share,safeguarded_share,idle_layer_steps
{
  echo "$header"
  echo '1,fenbp,0.01;0.02,0.001,0.3,0.31,0.32,1.2,2.5,20000,1e-9,0.5,0,0,0'
  echo '2,fenbp,0.01;0.02,0.001,0.2,,0.22,0.8,2.5,20000,1e-9,0.4,0,0,0'
} >"$work/layers.csv"
# Older --csv files have no beta column; a 30-epoch run takes a tick every 3 epochs.
{
  echo 'epoch,method,lr,train_error,validation_error,test_error,loss'
  for epoch in $(seq 1 30); do echo "$epoch,bp,0.001,0.0$((epoch % 9 + 1)),,0.05,0.3"; done
} >"$work/old.csv"
printf 'epoch,method,beta,train_error\n1,bp,,0.1\n' >"$work/no-test.csv"
printf 'method,parameter,value,layer,cosine,relative_error,iterations,unconverged,bp_steps\n' >"$work/fidelity.csv"
printf 'fenbp,beta,%s,1,%s,%s,0,0,1\n' 0.01 0.999 0.01 0.1 0.98 0.1 1 0.7 0.8 >>"$work/fidelity.csv"
printf 'zil,-,0,1,1,0,3,0,2\n' >>"$work/fidelity.csv"

is_png() {  # non-empty and starting with the PNG signature
  [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] &&
    [ "$(stat -c %s "$1")" -gt 2000 ]
}
python3 "$plot" curves "$work/curves.png" "$work/bp.jsonl" "$work/fenbp.jsonl" --title test
is_png "$work/curves.png" || { echo "curves.png is not a PNG"; exit 1; }
python3 "$plot" curves "$work/mixed.png" "$work/layers.csv" "$work/fenbp.jsonl"
is_png "$work/mixed.png" || { echo "mixed.png (CSV and JSON runs) is not a PNG"; exit 1; }
python3 "$plot" curves "$work/old.png" "$work/old.csv"
is_png "$work/old.png" || { echo "old.png (CSV without beta) is not a PNG"; exit 1; }
python3 "$plot" fidelity "$work/fidelity.png" "$work/fidelity.csv"
is_png "$work/fidelity.png" || { echo "fidelity.png is not a PNG"; exit 1; }

expect() {  # expect SCRIPT LINE: the gnuplot script has LINE (fixed string)
  grep -qF -- "$2" <<<"$1" || { echo "gnuplot script lacks: $2"; printf '%s\n' "$1"; exit 1; }
}
script="$(python3 "$plot" curves "$work/s.png" --print-script "$work/layers.csv" \
          "$work/bp.jsonl" "$work/fenbp.jsonl" "$work/fenbp-again.jsonl")"
expect "$script" 'title "fenbp β=0.01;0.02" noenhanced'
expect "$script" 'title "bp" noenhanced'
expect "$script" 'title "fenbp β=0.01 (fenbp.jsonl)" noenhanced'
expect "$script" 'title "fenbp β=0.01 (fenbp-again.jsonl)" noenhanced'
expect "$script" 'set xtics 1'
expect "$script" "set format x '%.0f'"
expect "$script" 'set xrange [1:3]'
script="$(python3 "$plot" curves "$work/s.png" "$work/old.csv" --print-script)"
expect "$script" 'title "bp" noenhanced'
expect "$script" 'set xtics 3'
[ ! -e "$work/s.png" ] || { echo "--print-script wrote the figure"; exit 1; }

echo 'not json' >"$work/bad.jsonl"
for bad in "curves $work/x.png $work/bad.jsonl" "curves $work/x.png $work/missing.jsonl" \
           "fidelity $work/x.png $work/bp.jsonl" \
           "curves $work/x.png $work/bp.jsonl $work/no-test.csv"; do
  if message="$(python3 "$plot" $bad 2>&1)"; then
    echo "accepted bad input: $bad"; exit 1
  fi
  [ "$(printf '%s\n' "$message" | wc -l)" -eq 1 ] || { echo "not one line: $message"; exit 1; }
  [ ! -e "$work/x.png" ] || { echo "left a file behind for: $bad"; exit 1; }
done
message="$(python3 "$plot" curves "$work/x.png" "$work/no-test.csv" 2>&1)" || true
[ "$message" = "plot.py: $work/no-test.csv: missing columns test_error" ] ||
  { echo "unexpected message for a CSV without test_error: $message"; exit 1; }
echo "plot command: PNGs written (JSON and CSV runs), labels and ticks right, bad input refused"
