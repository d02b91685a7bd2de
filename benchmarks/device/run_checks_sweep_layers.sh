# Device-tool run after a kernel change: GPU tests of the Triton path, the determinism check (the same backward
# repeated, bitwise-equal gradients), the diag kernel sweep (T=8192/32768 at d=4096, T=8192 at d=2048), then the
# layer rows of frozen, LoRA and the JORA diag/block cores at those shapes, with the sweep's best knobs and with
# the defaults.   bash benchmarks/device/run_checks_sweep_layers.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
JORA_COMPILE=0 timeout 80 python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
timeout 90 python benchmarks/gpu_determinism_check.py > $OUT/determinism.txt 2>&1; echo "determinism rc=$?"; tail -3 $OUT/determinism.txt
timeout 200 python benchmarks/gpu_kernel_sweep.py diag > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-170
BEST=$(grep '^BEST ' $OUT/sweep.txt | cut -d' ' -f2-); BEST=${BEST:-{\}}
M=jora_diag_oer,jora_diag,jora_block_oer; S=8192x4096,32768x4096,8192x2048
timeout 80 python benchmarks/gpu_tables.py --out $OUT/defaults --sections layers --shapes $S --methods $M > $OUT/defaults.log 2>&1; echo "defaults rc=$?"
timeout 80 python benchmarks/device/with_knobs.py "$BEST" benchmarks/gpu_tables.py --out $OUT/best --sections layers --shapes $S --methods $M > $OUT/best.log 2>&1; echo "best rc=$?"
for f in defaults best; do echo "== $f"; grep -E "^\| (8192|32768) " $OUT/$f/gpu_results.md | cut -d'|' -f2-4,6-7,9-12; done
