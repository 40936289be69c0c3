#!/usr/bin/env bash
# The GPU check: what a session lent a GPU (one H200, ~15 minutes with start-up) runs as ONE
# call, in under 8 minutes, so the time goes to measuring and not to debugging. Every part
# renders or synthesises its own data on the machine; nothing is downloaded.
#
#   bash benchmarks/gpu_check.sh                       # CUDA: the paper's setting
#   bash benchmarks/gpu_check.sh --device cpu --tiny   # the same code paths, tiny, on a CPU (CI)
#
# Parts (each timed; a failing part is recorded and the next one runs):
#   1. step      whole-step time and utilisation per task set, B/16 at 224 px, per-GPU batch 128,
#                bf16 (benchmarks/run.py parts 1 2)
#   1b. compile  the full-set step compiled against eager (part 3; --tiny: dynamo's eager
#                backend, the tracing path in seconds); a step that cannot compile fails it
#   2. peer      mtv's encoder against transformers' SiglipVisionModel (benchmarks/peer.py)
#   3. nccl      `torchrun --nproc_per_node 1` training the smoke experiment with backend nccl
#   4. syncs     the dispatcher-level host-read test, under torch.cuda.set_sync_debug_mode("error")
# Results: benchmarks/results/gpu_check/ (or --out DIR): each part's tables (their `Machine:`
# line names the device) and summary.md with every part's status and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda
tiny=0
out=benchmarks/results/gpu_check
python=${PYTHON:-python}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--device cuda|cpu, --tiny, --out DIR)" >&2; exit 2 ;;
  esac
done
if [ "$device" = cuda ] && ! "$python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check.sh: --device cuda, but torch sees no CUDA device (use --device cpu --tiny)" >&2
  exit 2
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# On the lent machine: the dependencies its image lacks come as wheels (benchmarks/gpu_wheels.sh,
# carried as .whl), and mtv runs from this checkout without being installed.
if ! "$python" -c 'import pydantic, polars, zarr, torchdata, torchjd' 2>/dev/null && [ -d .whl ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" .whl/*.whl || exit 2
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c 'import mtv_cli.main' 2>/dev/null; then
  mkdir -p "$work/src" && ln -s "$PWD/cli" "$work/src/mtv_cli"
  # The package metadata an install would write, so that what mtv finds through it works from
  # the checkout too: its task kinds (the `mtv.tasks` entry point) and the `mtv` command.
  meta="$work/src/mtv-0.1.0.dist-info"
  mkdir -p "$meta"
  printf 'Metadata-Version: 2.1\nName: mtv\nVersion: 0.1.0\n' > "$meta/METADATA"
  printf '[console_scripts]\nmtv = mtv_cli.main:entry\n\n[mtv.tasks]\nbuiltin = mtv.tasks\n' \
    > "$meta/entry_points.txt"
  export PYTHONPATH="$work/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
summary="$out/summary.md"
device_name=$("$python" -c "import torch; print(torch.cuda.get_device_name() if '$device' == 'cuda' else 'CPU')")
{
  echo "# GPU check"
  echo
  echo "Device: $device ($device_name); $( [ $tiny = 1 ] && echo 'tiny sizes (--tiny)' || echo 'B/16 at 224 px, per-GPU batch 128, bf16' ); $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  echo "| part | status | seconds |"
  echo "|---|---|---|"
} > "$summary"
failed=0

part() {  # part NAME COMMAND...: run, time and record one part
  local name=$1; shift
  local start=$SECONDS
  echo "+ [$name] $*"
  if "$@"; then status=ok; else status="FAILED ($?)"; failed=$((failed + 1)); fi
  echo "| $name | $status | $((SECONDS - start)) |" >> "$summary"
}

if [ $tiny = 1 ]; then
  step_args=(--model tiny --batch 4 --quick --parts 1 2)
  # The compiled step's tracing (dynamo, both passes, no graph break allowed to fail silently);
  # inductor's code generation would take minutes on a CPU and is not the GPU's anyway.
  compile_args=(--model tiny --batch 4 --repeats 2 --parts 3 --compile-backend eager)
  peer_args=(--shapes tiny-32 --modes eager --repeats 2)
  backend=gloo
  sync_filter="cpu and vl and not ssl"
else
  step_args=(--model B16 --image-size 224 --batch 128 --parts 1 2)
  compile_args=(--model B16 --image-size 224 --batch 128 --parts 3)
  peer_args=(--shapes B16-224-b64)
  backend=nccl
  sync_filter="cuda or guard or ema or counter"
fi

part step "$python" benchmarks/run.py --device "$device" "${step_args[@]}" --out "$out" --stem step
part compile "$python" benchmarks/run.py --device "$device" "${compile_args[@]}" --require-compile \
  --out "$out" --stem compile
part peer "$python" benchmarks/peer.py --device "$device" "${peer_args[@]}" --out "$out"
part "$backend" "$python" -m torch.distributed.run --standalone --nproc_per_node 1 \
  -m mtv_cli.main run experiments/smoke.yaml --out "$work/run" \
  --set "data.source.root=$work/mini" --set "runtime.device=$device" \
  --set "runtime.distributed.backend=$backend" --set data.loader.workers=0
part syncs "$python" -m pytest -q -p no:cacheprovider tests/test_host_reads.py -k "$sync_filter"

echo "summary: $summary"
cat "$summary"
[ $failed -eq 0 ]
