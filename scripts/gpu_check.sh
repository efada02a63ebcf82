#!/usr/bin/env bash
# The GPU check, in one go on one CUDA machine (about 5 minutes on an H200): the CUDA tests, the bench
# against diffusers and the Trainer's own step (eager, compiled, CUDA graphs), and the default digits
# run end to end (train -> sample -> eval); every figure goes into one JSON.
#
#   scripts/gpu_check.sh [OUT_DIR]          # OUT_DIR: $OUT if set, else ./gpu_check
#
# Writes OUT_DIR/gpu_check.log (everything printed) and OUT_DIR/gpu_check.json (the figures), plus the
# default run's sample grid.  Each step has its own time limit; a step that fails or runs out of time is
# recorded as such and the next one runs.  On a machine without network access, carry the Python packages
# it lacks as wheels in .whl/ (made where pip works):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl hydra-core==1.3.2 omegaconf==2.3.0 diffusers importlib_metadata
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3      # it has no wheel on the index
# A dry run of the script itself on CPU, in a minute (tests/test_scripts.py runs it):
#   GPU_CHECK_DEVICE=cpu BENCH_ARGS="--model unet_tiny --batch 8 --steps 2 --sample-batch 8" \
#     TRAIN_ARGS="trainer.steps=20 model=unet_tiny" EVAL_ARGS="num_samples=64 metrics=[test_loss]" scripts/gpu_check.sh /tmp/dry
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
export DIFFCTL_OUTPUT_ROOT="$work/outputs"
t_start=$(date +%s)
device=${GPU_CHECK_DEVICE:-cuda}
read -r -a bench_args <<< "${BENCH_ARGS:---model unet_base --size 32 --channels 3 --batch 128 --precision bf16 --steps 20}"
read -r -a train_args <<< "${TRAIN_ARGS:-}"
read -r -a eval_args <<< "${EVAL_ARGS:-}"
steps_json="$work/steps.jsonl"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record its status and wall time
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$(date +%s.%N)
  timeout --signal=INT --kill-after=15 "$limit" "$@"
  local rc=$?
  local t1=$(date +%s.%N)
  echo "=== $name: exit $rc in $(python3 -c "print(round($t1 - $t0, 1))")s"
  python3 -c "import json,sys; print(json.dumps({'step': sys.argv[1], 'rc': int(sys.argv[2]), 'seconds': round(float(sys.argv[4]) - float(sys.argv[3]), 1)}))" \
    "$name" "$rc" "$t0" "$t1" >> "$steps_json"
  return $rc
}

# --- 1. install: diffctl on the machine's own torch; the packages it lacks from .whl/ -----------------
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import diffctl.configs" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
  || { echo "install failed"; exit 1; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

# --- 2. the CUDA tests ---------------------------------------------------------------------------------
step cuda_tests 150 python3 -m pytest -o addopts=-ra -m cuda -q -p no:cacheprovider tests/test_cuda.py --junitxml="$work/cuda_tests.xml"

# --- 3. the bench: unet_base (DDPM's CIFAR-10 layout), 3x32x32, batch 128, bf16 -------------------------
step bench_eager 100 python3 scripts/bench.py "${bench_args[@]}" --device "$device" --peer diffusers --trainer --out "$work/bench_eager.json"
step bench_compile 170 python3 scripts/bench.py "${bench_args[@]}" --device "$device" --compile --trainer --sample-steps 10 --out "$work/bench_compile.json"
step bench_graphs 170 python3 scripts/bench.py "${bench_args[@]}" --device "$device" --compile reduce-overhead --trainer --sample-steps 10 \
  --out "$work/bench_graphs.json"
step bench_small 60 python3 scripts/bench.py --device "$device" --trainer --peer diffusers --steps 10 --out "$work/bench_small.json"

# --- 4. the default run end to end: diffctl train on digits, then sample and eval ---------------------
step train_default 150 python3 -m diffctl train device="$device" "${train_args[@]}"
step sample_default 60 python3 -m diffctl sample ckpt=latest device="$device"
step eval_default 150 python3 -m diffctl eval ckpt=latest device="$device" "${eval_args[@]}"

# --- 5. one JSON of figures ----------------------------------------------------------------------------
python3 - "$work" "$out" "$t_start" <<'EOF'
import glob, json, re, shutil, sys, time
from pathlib import Path

work, out, t_start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
record = {"steps": [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines()], "total_seconds": round(time.time() - t_start)}
for name in ("bench_eager", "bench_compile", "bench_graphs", "bench_small"):
    path = work / f"{name}.json"
    if path.exists():
        record[name] = json.loads(path.read_text())
xml = work / "cuda_tests.xml"
if xml.exists():
    head = re.search(r'<testsuite [^>]*', xml.read_text()).group(0)
    record["cuda_tests"] = {k: int(v) for k, v in re.findall(r'(tests|failures|errors|skipped)="(\d+)"', head)}
runs = sorted(glob.glob(str(work / "outputs" / "train" / "*" / "*")))
if runs:
    run = Path(runs[-1])
    log = (run / "train.log").read_text() if (run / "train.log").exists() else ""
    done = re.search(r"done: (\d+) steps in ([\d.]+)s, final loss ([\d.na]+)", log)
    if done:
        record["train_default"] = {"steps": int(done.group(1)), "loop_seconds": float(done.group(2)), "final_loss": float(done.group(3))}
    grid = sorted(run.glob("samples/*.png"))
    if grid:
        shutil.copy(grid[-1], out / "default_grid.png")
for path in glob.glob(str(work / "outputs" / "eval" / "*" / "*" / "metrics.json")):
    record["eval_default"] = json.loads(Path(path).read_text())
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps({k: v for k, v in record.items() if k != "eval_default"}, indent=1)[:6000])
EOF
rm -rf "$work"
