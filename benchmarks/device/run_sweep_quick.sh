# Device-tool run, short: the kernel sweep at the T=8192 shapes, then the T=8192, d=4096 layer rows with the
# defaults and with the best variant.   bash benchmarks/device/run_sweep_quick.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
timeout 150 python benchmarks/gpu_kernel_sweep.py diag --short > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-170
BEST=$(grep '^BEST ' $OUT/sweep.txt | cut -d' ' -f2-); BEST=${BEST:-{\}}
for knobs in '{}' "$BEST"; do
timeout 60 python benchmarks/device/with_knobs.py "$knobs" benchmarks/gpu_tables.py --out $OUT/l --sections layers --shapes 8192x4096 --methods frozen,jora_diag_oer,jora_diag > $OUT/l.log 2>&1; echo "$knobs rc=$?"
grep -E "^\| 8192 " $OUT/l/gpu_results.md | cut -d'|' -f2-4,9-10
done
