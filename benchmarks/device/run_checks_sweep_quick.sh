# Device-tool run after a kernel change: GPU tests of the Triton path, a race check of the per-coordinate
# backward's determinism (the same backward repeated, bitwise-equal gradients), the diag kernel sweep, then the quick
# layer, model and host tables.  bash benchmarks/device/run_checks_sweep_quick.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
JORA_COMPILE=0 timeout 90 python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
timeout 60 python benchmarks/gpu_determinism_check.py > $OUT/ticket.txt 2>&1; echo "ticket rc=$?"; tail -4 $OUT/ticket.txt
timeout 200 python benchmarks/gpu_kernel_sweep.py diag > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-180
mkdir -p $OUT/quick; timeout 200 python benchmarks/gpu_tables.py --out $OUT/quick --sections layers,model,host --quick > $OUT/quick.log 2>&1; echo "quick rc=$?"
grep -E "^\| (8192|frozen|floor|LoRA|JORA|lora|jora)" $OUT/quick/gpu_results.md | cut -c1-160
