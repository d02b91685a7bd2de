# Device-tool run: kernel sweep, GPU tests of the Triton path, large-shape correctness, quick layer + host tables.
#   bash benchmarks/device/run_sweep_and_checks.sh [cores, default diag,block]   (repository root, $OUT set)
source benchmarks/device/setup.sh
timeout 300 python benchmarks/gpu_kernel_sweep.py ${1:-diag,block} > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v Warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/slot_grads_kernel/slot/; s/fold_kernel/fold/' | cut -c1-200
JORA_COMPILE=0 timeout 140 python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -3 $OUT/pytest.log
mkdir -p $OUT/quick; timeout 260 python benchmarks/gpu_tables.py --out $OUT/quick --sections correctness,layers,host --quick > $OUT/quick.log 2>&1; echo "quick rc=$?"
grep -E "^\| (8192|frozen|lora|jora|torch)" $OUT/quick/gpu_results.md
