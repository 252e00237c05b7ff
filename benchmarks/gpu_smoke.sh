#!/usr/bin/env bash
# GPU smoke suite in one call: the speed table of benchmarks/gpu.py, then every reader, every CLI command,
# training steps, save/load and eval on CUDA (the test files that run models, with AVMEM_TEST_DEVICE=cuda).
# Exits non-zero when either part failed or ran out of its time. The first CUDA call of each test process
# compiles the TTT step (TTTConfig.fast="compile"): keep SMOKE_TEST_SECONDS generous, or export
# AVMEM_TTT_FAST=fused to test the same maths uncompiled.
#   bash benchmarks/gpu_smoke.sh [OUT_DIR]        # OUT_DIR gets cuda_tests.log, gpu.md, gpu.json
# Env: SMOKE_TEST_SECONDS (default 150) bounds the tests, GPU_BENCH_SECONDS (default 330) the benchmarks,
# GPU_BENCH_ARGS adds options to benchmarks/gpu.py, SMOKE_WORKERS pytest-xdist workers (default 12, when present).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_smoke_out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 3
import torch
assert torch.cuda.is_available(), "no CUDA device"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)
PY
echo "== benchmarks/gpu.py"
timeout "${GPU_BENCH_SECONDS:-330}" python3 benchmarks/gpu.py --out "$out" ${GPU_BENCH_ARGS:-} 2>&1 | tee "$out/gpu_bench.log" | grep -v "^\s*$" | tail -60
bench_rc=${PIPESTATUS[0]}
echo "gpu.py rc=$bench_rc"
echo "== tests on CUDA"
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n "${SMOKE_WORKERS:-12}")
python3 -c "from avmem import load_model; [load_model(n) for n in ('tiny-qwen3-vl', 'tiny-qwen2.5-vl', 'small-qwen3-vl')]" >/dev/null 2>&1
AVMEM_TEST_DEVICE=cuda timeout "${SMOKE_TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider "${workers[@]}" \
  --tb=short -rf tests/test_session.py tests/test_kv_selection.py tests/test_readers.py tests/test_prompt_builder.py \
  tests/test_cli_ask.py tests/test_cli_demo.py tests/test_eval.py tests/test_train.py tests/test_official_release.py \
  tests/test_presets.py tests/test_ttt_layer.py tests/test_audio_encoder.py tests/test_session_media.py \
  > "$out/cuda_tests.log" 2>&1
test_rc=$?
echo "pytest rc=$test_rc"
grep -E "^(FAILED|ERROR)" "$out/cuda_tests.log" | cut -c1-240 | head -40
tail -2 "$out/cuda_tests.log"
[ "$bench_rc" -eq 0 ] && [ "$test_rc" -eq 0 ]
