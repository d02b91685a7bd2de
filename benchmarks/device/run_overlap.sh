# Device-tool run: the ∂L/∂x matmul beside the token sums. gpu_overlap_check.py (cuBLAS's SM count target,
# gradients against the serial backward), then gpu_layer_ab.py over the knob sets given (JSON) at SHAPES.
#   bash benchmarks/device/run_overlap.sh '{}' '{"OVERLAP_SMS": 16}'
source benchmarks/device/setup.sh
timeout 120 python benchmarks/gpu_overlap_check.py "$@" --shapes "${SHAPES:-8192x4096,8192x2048}" > $OUT/overlap.txt 2>&1
echo "overlap check rc=$?"; grep -v -i warn $OUT/overlap.txt
timeout 300 python benchmarks/gpu_layer_ab.py "$@" --shapes "${SHAPES:-8192x4096,8192x2048}" > $OUT/ab.txt 2>&1
echo "ab rc=$?"; grep -v -i warn $OUT/ab.txt
