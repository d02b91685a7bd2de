# Device-tool run: the determinism check, then every table (correctness, layers with wall and device time, model,
# host, torch.compile), each section written as it finishes.  bash benchmarks/device/run_final.sh [pytest]
# (repository root, $OUT set; "pytest" first runs the GPU tests of the Triton paths, PYTEST_K=expr picks them;
# SECTIONS=a,b picks sections, METHODS=a,b the layer table's methods besides frozen and LoRA r16)
source benchmarks/device/setup.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/gpu_state.txt
lscpu | grep -E "Model name|MHz" > $OUT/cpu.txt
if [ "$1" = pytest ]; then
  JORA_COMPILE=0 timeout ${PYTEST_TIMEOUT:-90} python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "${PYTEST_K:-gpu or many or scale}" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
fi
timeout ${DETERMINISM_TIMEOUT:-150} python benchmarks/gpu_determinism_check.py > $OUT/determinism.txt 2>&1; echo "determinism rc=$?"; grep -E "ok|FAILED" $OUT/determinism.txt
timeout 480 python benchmarks/gpu_tables.py --out $OUT --sections ${SECTIONS:-correctness,layers,model,host,compile} ${METHODS:+--methods $METHODS} > $OUT/tables.log 2>&1; echo "tables rc=$?"
grep -E "section" $OUT/tables.log
grep -E "^\| (8192|32768) \| (2048|4096|8192) \| (frozen|lora_r16|jora_diag_oer|jora_diag|jora_block_oer|jora_lowrank_oer)" $OUT/gpu_results.md | cut -d'|' -f2-4,6-7,9-12
sed -n '/## Model/,/## Host/p' $OUT/gpu_results.md
sed -n '/## Host/,/## torch/p' $OUT/gpu_results.md
