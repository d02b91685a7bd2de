# Device-tool run: the sweep of the software-pipelined column loop and fold copy (kernel times per variant,
# diag+OER at T=8192/32768 d=4096 and T=8192 d=2048); then, with the best variant's knobs, the GPU tests of the
# Triton path, the ticket race check and the layer rows at those shapes; then the same rows with the defaults.
#   bash benchmarks/device/run_pipeline_sweep.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
timeout 270 python benchmarks/gpu_kernel_sweep.py diag > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/; s/COLUMN_//g' | cut -c1-170
BEST=$(grep '^BEST ' $OUT/sweep.txt | cut -d' ' -f2-); BEST=${BEST:-{\}}
JORA_COMPILE=0 timeout 90 python benchmarks/device/with_knobs.py "$BEST" -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
timeout 60 python benchmarks/device/with_knobs.py "$BEST" benchmarks/gpu_ticket_check.py > $OUT/ticket.txt 2>&1; echo "ticket rc=$?"; tail -3 $OUT/ticket.txt
M=jora_diag_oer,jora_diag,jora_block_oer; S=8192x4096,32768x4096,8192x2048
timeout 80 python benchmarks/device/with_knobs.py "$BEST" benchmarks/gpu_tables.py --out $OUT/best --sections layers --shapes $S --methods $M > $OUT/best.log 2>&1; echo "best rc=$?"
timeout 80 python benchmarks/gpu_tables.py --out $OUT/defaults --sections layers --shapes $S --methods $M > $OUT/defaults.log 2>&1; echo "defaults rc=$?"
for f in best defaults; do echo "== $f"; grep -E "^\| (8192|32768) " $OUT/$f/gpu_results.md | cut -d'|' -f2-4,6-7,9-12; done
