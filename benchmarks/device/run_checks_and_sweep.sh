# Device-tool run: GPU tests of the Triton paths, the kernel launch-shape sweep, the large-shape correctness
# table and the headline layer row.  bash benchmarks/device/run_checks_and_sweep.sh  (repository root, $OUT set)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:packages/jora-ops/src:packages/jora-core/src:packages/jora-peft/src:tests:benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/gpu_state.txt
JORA_COMPILE=0 timeout 240 python -m pytest -q -p no:cacheprovider tests/ops/test_sparse_core_triton.py tests/ops/test_gpu.py tests/ops/test_fused.py -k "triton or gpu or Triton" > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log
tail -4 $OUT/pytest.log
timeout 150 python benchmarks/gpu_kernel_sweep.py > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
timeout 100 python benchmarks/gpu_tables.py --out $OUT --sections correctness > $OUT/correctness.log 2>&1; echo "corr rc=$?"
grep -E "^correctness|section" $OUT/correctness.log | cut -c1-120 | tail -14
mkdir -p $OUT/quick; timeout 80 python benchmarks/gpu_tables.py --out $OUT/quick --sections layers --quick > $OUT/quick.log 2>&1; echo "quick rc=$?"
grep -E "^\| 8192" $OUT/quick/gpu_results.md
grep -v Warn $OUT/sweep.txt | cut -c1-230
