# Device-tool run: the kernel sweep at the T=8192 shapes (`--short`), then the in-process A/B of the knob sets
# given (JSON) on the T=8192 layer rows.   bash benchmarks/device/run_ab.sh '{}' '{"LAUNCH_PDL": true}'
source benchmarks/device/setup.sh
timeout 150 python benchmarks/gpu_kernel_sweep.py diag --short > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-170
timeout 240 python benchmarks/gpu_layer_ab.py "$@" > $OUT/ab.txt 2>&1; echo "ab rc=$?"; grep -v -i warn $OUT/ab.txt
