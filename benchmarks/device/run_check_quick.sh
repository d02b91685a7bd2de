# Device-tool run, short: the determinism check, the kernel times of the defaults (diag, T=8192 at d=4096 and
# 2048), large-shape correctness and the layer rows at those shapes.   bash benchmarks/device/run_check_quick.sh
source benchmarks/device/setup.sh
timeout 60 python benchmarks/gpu_determinism_check.py > $OUT/determinism.txt 2>&1; echo "determinism rc=$?"; grep -E "ok|FAILED" $OUT/determinism.txt
timeout 60 python -c "
import gpu_kernel_sweep as s
for d in (4096, 2048):
    print(d, {k.strip('_'): round(v, 1) for k, v in s.kernel_times(8192, 'diag', d).items()})
" 2>&1 | grep -v -i warn
mkdir -p $OUT/q; timeout 150 python benchmarks/gpu_tables.py --out $OUT/q --sections correctness,layers --shapes 8192x4096,8192x2048 --methods jora_diag_oer,jora_diag,jora_block_oer > $OUT/q.log 2>&1; echo "tables rc=$?"
grep -E "False|True" $OUT/q/gpu_results.md | cut -d'|' -f2-9 | sort -t'|' -k7 | tail -3
grep -E "^\| 8192 " $OUT/q/gpu_results.md | cut -d'|' -f2-4,6-7,9-12
