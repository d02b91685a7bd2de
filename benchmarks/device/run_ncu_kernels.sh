# Device-tool run (next step for the token sums and the fold): Nsight Compute, full section set with source
# lines, on the sparse-core kernels at T=8192, d=4096 (bf16, diag+OER); then the sweep (with the column
# programs timed alone).  bash benchmarks/device/run_ncu_kernels.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout 300 $NCU --clock-control none --kernel-name regex:"^_(fold|token_sums)_kernel" --launch-skip 4 \
  --launch-count 2 --set full --import-source yes -o $OUT/ncu_full python benchmarks/gpu_ncu_target.py jora_diag_oer \
  > $OUT/ncu.log 2>&1; echo "ncu rc=$?"
$NCU --import $OUT/ncu_full.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
$NCU --import $OUT/ncu_full.ncu-rep --page source --csv > $OUT/ncu_source.csv 2>&1
grep -E "_kernel|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Eligible Warps" $OUT/ncu_details.txt | head -30
timeout 200 python benchmarks/gpu_kernel_sweep.py diag > $OUT/sweep.txt 2>&1; echo "sweep rc=$?"; grep -v -i warn $OUT/sweep.txt | cut -c1-200
