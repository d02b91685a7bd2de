# Device-tool run: the kernel sweep (diag; T=8192/32768 at d=4096, T=8192 at d=2048) and Nsight Compute on the
# per-coordinate kernel.   bash benchmarks/device/run_sweep_ncu_coord.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
timeout 200 python benchmarks/gpu_kernel_sweep.py diag > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"
grep -v -i warn $OUT/sweep.txt | sed -e 's/coordinate_grads_kernel/coord/; s/token_sums_kernel/sums/; s/fold_kernel/fold/' | cut -c1-170
bash benchmarks/device/run_ncu_kernel.sh _coordinate_grads_kernel 2>&1 | cut -c1-200
