#!/usr/bin/env bash
# GPU check (issue 19, part 4): on a machine with a GPU, the scaling benchmark at N = 1,000 and
# 10,000 subjects and a 100,000-member Robertson ensemble (Rodas5P), each on the GPU and on the
# same machine's CPU (JAX_PLATFORMS=cpu), then the CPU / GPU ratios.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]
#
# Needs the package importable (pip install -e . or PYTHONPATH=.) and a CUDA build of JAX.
# Writes one JSON per run to OUTDIR (default: gpu_check_out) and prints a summary table.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 BAYES_UDE_COMPILATION_CACHE=0

nvidia-smi -L || echo "no nvidia-smi"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"

run() {  # name, timeout, command...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s"
    tail -n 2 "$OUT/$name.log"
}

run ensemble_gpu 120 "$PY" benchmarks/ensemble.py --members 100000 --json "$OUT/ensemble_gpu.json"
JAX_PLATFORMS=cpu run ensemble_cpu 90 "$PY" benchmarks/ensemble.py --members 100000 \
    --json "$OUT/ensemble_cpu.json"
run scaling_gpu_1000 120 "$PY" benchmarks/scaling.py --one 1000 --fit-max 10000 \
    --json "$OUT/scaling_gpu_1000.json"
run scaling_gpu_10000 150 "$PY" benchmarks/scaling.py --one 10000 --fit-max 10000 \
    --json "$OUT/scaling_gpu_10000.json"
# the CPU fit at N = 10,000 takes minutes (about 25 iterations of a 1-2 s objective+gradient):
# not spent on GPU time; the per-evaluation ratios say the same
JAX_PLATFORMS=cpu run scaling_cpu_10000 100 "$PY" benchmarks/scaling.py --one 10000 \
    --fit-max 1000 --json "$OUT/scaling_cpu_10000.json"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
eg, ec = load("ensemble_gpu"), load("ensemble_cpu")
if eg and ec:
    print(f"Robertson x {eg['members']} (Rodas5P): GPU {eg['seconds']:.3f} s, CPU {ec['seconds']:.3f} s, "
          f"CPU/GPU {ec['seconds'] / eg['seconds']:.1f}x; compile GPU {eg['compile_s']:.1f} s, "
          f"CPU {ec['compile_s']:.1f} s; failed {eg['failed']}/{ec['failed']}; "
          f"max rel. error GPU {eg['max_rel_error_first20']:.1e}")
g1, g, c = load("scaling_gpu_1000"), load("scaling_gpu_10000"), load("scaling_cpu_10000")
keys = ("read_s", "focei_grad_s", "nuts_grad_s", "sgld_step_s", "fit_s")
if g and c:
    for k in keys:
        if k in g and k in c:
            print(f"N=10000 {k}: GPU {g[k]:.4g} s, CPU {c[k]:.4g} s, CPU/GPU {c[k] / g[k]:.1f}x")
    for k in ("focei_compile_s", "nuts_compile_s", "sgld_compile_s"):
        print(f"N=10000 {k}: GPU {g[k]:.1f} s, CPU {c[k]:.1f} s")
if g1 and g:
    import math
    for k in keys:
        if k in g1 and k in g:
            s = (math.log(g[k]) - math.log(g1[k])) / math.log(10)
            print(f"GPU log-log slope 1000->10000 {k}: {s:.2f}")
for r in (g1, g, c):
    if r and "fit_rel_errors" in r:
        print(f"{r['backend']} N={r['n']} FOCEI fit {r['fit_s']:.1f} s, {r['fit_iterations']} it, "
              f"converged {r['fit_converged']}: " + ", ".join(
                  f"{k} {v:+.1%}" for k, v in r["fit_rel_errors"].items()))
        print(f"   peak RSS {r['peak_rss_mb']:.0f} MB" + (f", device peak {r['device_peak_mb']:.0f} MB"
                                                          if "device_peak_mb" in r else ""))
EOF
