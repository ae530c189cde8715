#!/usr/bin/env bash
# One training epoch (MNIST, the first 50,000 training images, float) in bilevel and in PyTorch
# (Debian's python3-torch on OpenBLAS, scripts/compare_pytorch.py), at 1 and 2 threads; writes
# results/pytorch.{json,md}. Methods and settings, the same in both:
# - bp, fenbp: the Fenchel BP paper's setting (784-256-128-64-10 ReLU, Adam 1e-3, batch 50,
#   shuffled), mnist_mlp's defaults;
# - pcn: predictive coding on the same MLP and Adam, batch 50, loss weight s = 1, 20 plain
#   inference steps at rate 0.1 from the forward pass (bilevel's --inference plain: no
#   momentum). mnist_mlp has no fixed-step mode for PCN: its stopping rule runs with a
#   tolerance of 1e-30 and a cap of 20 (--inner-iterations), so every sample takes the 20 steps
#   unless its steps fall below float rounding (64 ulps of ||z||), where it is retired
#   (bilevel's unconverged_share in the JSON is the share that took all 20; results/pytorch.md
#   says how many were retired);
# - ep: Scellier & Bengio's 784-500-10 with their code's settings as ep_mnist runs them (20 free
#   and 4 nudged steps at step 0.5, beta with a random sign, persistent particles, per-layer SGD,
#   batch 20 in fixed order);
# - lenet5: BP on LeNet-5 (mnist_mlp --model lenet5: convolutions, average pooling, ReLU, Adam
#   1e-3, batch 50, shuffled).
# Times are of the training steps only, in both. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Debian's torch calls the system BLAS: OpenBLAS (its recommended one), not the reference BLAS.
scripts/install-packages.sh python3-torch libopenblas0-pthread
scripts/fetch-mnist.sh --mnist-only data >/dev/null
pcn_bilevel=(--layers 784,256,128,64,10 --activation relu --batch 50 --optimizer adam --lr 1e-3
             --beta 1 --inner-step 0.1 --inner-iterations 20 --tolerance 1e-30
             --inner-start forward --inference plain)
pcn_pytorch=(--layers 784,256,128,64,10 --activation relu --batch 50 --lr 1e-3 --beta 1
             --inference-rate 0.1 --inference-steps 20)
mkdir -p results
: >results/pytorch.json.tmp
for threads in 1 2; do
  for method in bp fenbp pcn lenet5; do
    bilevel_flags=(--method "$method") pytorch_flags=()
    if [ "$method" = pcn ]; then
      bilevel_flags+=("${pcn_bilevel[@]}") pytorch_flags=("${pcn_pytorch[@]}")
    fi
    if [ "$method" = lenet5 ]; then bilevel_flags=(--method bp --model lenet5); fi
    epoch=$(build/examples/mnist_mlp --data data/mnist "${bilevel_flags[@]}" \
      --epochs 1 --quiet --threads "$threads" | sed -n 1p)
    /usr/bin/python3 <<<"$epoch" -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'framework':'bilevel','method':'$method','threads':$threads,'seconds':r['seconds'],'samples_per_s':r['samples_per_s'],'train_error':r['train_error'],'loss':r['loss'],'unconverged_share':r['unconverged_share']}))" \
      >>results/pytorch.json.tmp
    OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" \
      /usr/bin/python3 scripts/compare_pytorch.py data/mnist --method "$method" \
      "${pytorch_flags[@]}" --threads "$threads" >>results/pytorch.json.tmp
  done
  # ep_mnist's first line is epoch 1; its seconds are the training steps only (the held-out
  # relaxations after the epoch are timed apart), its train_error the free phases' running error.
  epoch=$(build/examples/ep_mnist --data data/mnist --epochs 1 --quiet --threads "$threads" |
    sed -n 1p)
  /usr/bin/python3 <<<"$epoch" -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'framework':'bilevel','method':'ep','threads':$threads,'seconds':r['seconds'],'samples_per_s':50000/r['seconds'],'train_error':r['train_error'],'loss':r['loss']}))" \
    >>results/pytorch.json.tmp
  OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" \
    /usr/bin/python3 scripts/compare_pytorch.py data/mnist --method ep --threads "$threads" \
    >>results/pytorch.json.tmp
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
    for method in ("bp", "fenbp", "pcn", "ep", "lenet5"):
        ours, theirs = find("bilevel", method, threads), find("pytorch", method, threads)
        print(f"| {method} | {threads} | {ours['seconds']:.2f} | {theirs['seconds']:.2f} | "
              f"{theirs['seconds'] / ours['seconds']:.2f} |")
retired = ", ".join(f"{100 * (1 - find('bilevel', 'pcn', threads)['unconverged_share']):.1f}% "
                    f"({threads} thread{'s' if threads > 1 else ''})" for threads in (1, 2))
print(f"\npcn: bilevel's stopping rule retired {retired} of the samples before the 20th step "
      "(their steps had fallen below float rounding); PyTorch takes all 20 for every sample.")
PY
mv results/pytorch.md.tmp results/pytorch.md
cat results/pytorch.md
