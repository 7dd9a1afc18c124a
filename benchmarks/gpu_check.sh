#!/usr/bin/env bash
# The prepared GPU check (issue 16, point 3). On a CUDA machine, from the repository root:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh            # results in $OUT (default ./gpu_check_out)
#     bash benchmarks/gpu_check.sh --device cpu --tiny      # smoke run of every code path, no GPU
#
# 1. the kernel tests without the Triton interpreter (tests/kernels; test_gpu.py is collected
#    only where CUDA is), then the streaming demo headless on the device (python -m clplat.stream:
#    eager, --cuda-graph (fp32 and --bf16), 8 streams batched, the ConvS5 predictor;
#    GPU_CHECK_SKIP_DEMO=1 skips it),
#    then benchmarks/convs5.py on the device (issue 13; GPU_CHECK_SKIP_CONVS5=1 skips it),
#    2.-4. benchmarks/gpu_bench.py: equivalence on CUDA, batch-1 latency and
#    multi-stream throughput for X3D-S and r2plus1d_18 vs sliding-window recompute and
#    continual-inference 1.2.4. Wheels in ./.whl (e.g. continual-inference) are installed first
#    into a private folder, when the machine has no package index. Each part runs even if the
#    previous one failed; the exit code is the first failure's. Extra arguments go to gpu_bench.py.
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0
# wheels carried to a machine without a package index (continual-inference for the co baseline);
# outside the piped block below, so the PYTHONPATH export reaches the later steps
if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import continual" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site \
    .whl/*.whl 2>&1 | tee "$OUT/pip.txt"
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  echo "# gpu_check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu --format=csv
  fi
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$PY" -c "import continual; print('continual-inference', continual.__version__)" || echo "continual-inference: not importable (co baseline skipped)"
} 2>&1 | tee "$OUT/env.txt"

if [[ " $* " != *" --device cpu "* && -z "${GPU_CHECK_SKIP_TESTS:-}" ]]; then
  echo "## kernel tests (compiled Triton on CUDA tensors, no interpreter; -m 'not slow')"
  env -u TRITON_INTERPRET timeout 120 "$PY" -m pytest tests/kernels -q -p no:cacheprovider -rs \
      -m "not slow" 2>&1 | tee "$OUT/pytest_kernels.txt"
  rc=${PIPESTATUS[0]}
  [[ $rc -ne 0 ]] && status=$rc
fi

if [[ -z "${GPU_CHECK_SKIP_DEMO:-}" ]]; then
  # the streaming demo end to end on the device, headless: eager, CUDA graphs, 8 streams in one
  # batch through CUDA graphs, the ConvS5 predictor (summaries and latency JSONs in $OUT/demo_*)
  dev=cuda; [[ " $* " == *" --device cpu "* ]] && dev=cpu
  graph=(); [[ $dev == cuda ]] && graph=(--cuda-graph)
  echo "## streaming demo on $dev"
  bf16=(); [[ $dev == cuda ]] && bf16=(--cuda-graph --bf16)
  for run in "eager:" "graph:${graph[*]}" "graph_bf16:${bf16[*]}" "multi8:${graph[*]} --source synthetic,synthetic,synthetic,synthetic,synthetic,synthetic,synthetic,synthetic" \
             "convs5:--model convs5_moving_digits"; do
    name=${run%%:*}; read -r -a extra <<< "${run#*:}"
    timeout 150 "$PY" -m clplat.stream --device "$dev" --max-frames 300 --no-window "${extra[@]}" \
      --out "$OUT/demo_$name.mp4" 2>&1 | tee "$OUT/demo_$name.txt"
    rc=${PIPESTATUS[0]}
    [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
  done
fi

if [[ -z "${GPU_CHECK_SKIP_CONVS5:-}" ]]; then
  # issue 13: ConvS5 vs ConvLSTM training step at matched parameters on the device (target >= 3x at T >= 64)
  dev=cuda; [[ " $* " == *" --device cpu "* ]] && dev=cpu
  lengths=(16 64 256); [[ " $* " == *" --tiny "* ]] && lengths=(4 8)
  echo "## convs5 training step on $dev"
  timeout 120 "$PY" benchmarks/convs5.py --device "$dev" --lengths "${lengths[@]}" --channels 32 --grid 16 \
    --layers 2 --batch 2 --rounds 3 --scan both --json "$OUT/convs5.json" 2>&1 | tee "$OUT/convs5.txt"
  rc=${PIPESTATUS[0]}
  [[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
fi

echo "## gpu_bench"
# the whole check ends within GPU_CHECK_LIMIT seconds (default 400): the bench gets what is left,
# and its --budget stops starting new measurements 40 s before that (its JSON is written as it goes)
limit=${GPU_CHECK_LIMIT:-400}
[[ " $* " == *" --device cpu "* && -z "${GPU_CHECK_LIMIT:-}" ]] && limit=3600  # a CPU smoke run is slow
left=$(( limit - SECONDS - 5 ))
(( left < 60 )) && left=60
timeout "$left" "$PY" benchmarks/gpu_bench.py --budget $(( left - 40 )) --json "$OUT/gpu_bench.json" "$@" 2>&1 | tee "$OUT/gpu_bench.txt"
rc=${PIPESTATUS[0]}
[[ $rc -ne 0 && $status -eq 0 ]] && status=$rc
echo "# gpu_check done (exit $status); results in $OUT"
exit $status
