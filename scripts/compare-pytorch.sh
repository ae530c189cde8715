#!/usr/bin/env bash
# One training epoch of the Fenchel BP paper's setting (MNIST 50,000 images, 784-256-128-64-10
# ReLU, Adam 1e-3, batch 50, float) in bilevel's mnist_mlp and in PyTorch (Debian's
# python3-torch on OpenBLAS), BP and Fenchel BP, at 1 and 2 threads; writes
# results/pytorch.{json,md}.
# Times are of the training steps only, in both. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Debian's torch calls the system BLAS: OpenBLAS (its recommended one), not the reference BLAS.
scripts/install-packages.sh python3-torch libopenblas0-pthread
scripts/fetch-mnist.sh --mnist-only data >/dev/null
mkdir -p results
: >results/pytorch.json.tmp
for threads in 1 2; do
  for method in bp fenbp; do
    epoch=$(build/examples/mnist_mlp --data data/mnist --method "$method" --epochs 1 --quiet \
      --threads "$threads" | sed -n 1p)
    /usr/bin/python3 <<<"$epoch" -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'framework':'bilevel','method':r['method'],'threads':$threads,'seconds':r['seconds'],'samples_per_s':r['samples_per_s'],'train_error':r['train_error']}))" \
      >>results/pytorch.json.tmp
    OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" \
      /usr/bin/python3 scripts/compare_pytorch.py data/mnist --method "$method" \
      --threads "$threads" >>results/pytorch.json.tmp
  done
done
mv results/pytorch.json.tmp results/pytorch.json
/usr/bin/python3 - results/pytorch.json >results/pytorch.md.tmp <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def find(framework, method, threads):
    return next(r for r in runs if r["framework"].startswith(framework) and
                r["method"] == method and r["threads"] == threads)
torch_version = next(r["framework"] for r in runs if r["framework"].startswith("pytorch"))
print(f"| method | threads | bilevel epoch (s) | {torch_version} epoch (s) | PyTorch / bilevel |")
print("|---|---|---|---|---|")
for threads in (1, 2):
    for method in ("bp", "fenbp"):
        ours, theirs = find("bilevel", method, threads), find("pytorch", method, threads)
        print(f"| {method} | {threads} | {ours['seconds']:.2f} | {theirs['seconds']:.2f} | "
              f"{theirs['seconds'] / ours['seconds']:.2f} |")
PY
mv results/pytorch.md.tmp results/pytorch.md
cat results/pytorch.md
