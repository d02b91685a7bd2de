# Device-tool run: the kernel sweep at the T=8192 shapes (`--short`), then the T=8192 layer rows (d = 4096, 2048)
# with each knob set given (JSON; '{}' = the defaults; a leading + merges it into the sweep's best variant), and
# the determinism check with the last one.
#     bash benchmarks/device/run_sweep_ab.sh '{}' '{"LAUNCH_PDL": true}'   (repository root, $OUT set)
source benchmarks/device/setup.sh
timeout 200 python benchmarks/gpu_kernel_sweep.py diag --short > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-170
BEST=$(grep '^BEST ' $OUT/sweep.txt | cut -d' ' -f2-); BEST=${BEST:-{\}}
i=0
for knobs in "$@"; do
if [ "${knobs:0:1}" = "+" ]; then
knobs=$(python -c 'import json, sys; k = json.loads(sys.argv[1]); k.update(json.loads(sys.argv[2])); print(json.dumps(k))' "$BEST" "${knobs:1}")
fi
i=$((i + 1)); mkdir -p $OUT/l$i
timeout 90 python benchmarks/device/with_knobs.py "$knobs" benchmarks/gpu_tables.py --out $OUT/l$i --sections layers --shapes 8192x4096,8192x2048 --methods frozen,jora_diag_oer,jora_diag > $OUT/l$i.log 2>&1; echo "$knobs rc=$?"
grep -E "^\| 8192 " $OUT/l$i/gpu_results.md | cut -d'|' -f2-4,9-10
done
timeout 90 python benchmarks/device/with_knobs.py "$knobs" benchmarks/gpu_determinism_check.py > $OUT/determinism.txt 2>&1; echo "determinism rc=$?"; grep -E "ok|FAILED" $OUT/determinism.txt
