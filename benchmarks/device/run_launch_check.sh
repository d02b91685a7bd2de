# Device-tool run: GPU tests (direct launches included), launch cost, quick layer + host + model tables.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/aenum*.whl
export PYTHONPATH=/tmp/site:packages/jora-ops/src:packages/jora-core/src:packages/jora-peft/src:tests:benchmarks PYTHONUNBUFFERED=1
lscpu | grep -E "Model name" > $OUT/cpu.txt
JORA_COMPILE=0 timeout 75 python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale or direct" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
timeout 45 python benchmarks/gpu_launch_cost.py 2>&1 | grep -v -i warn > $OUT/launch_cost.txt; grep -E "fused|CachedLaunch|kernel\[grid\]|PEFT" $OUT/launch_cost.txt
timeout 160 python benchmarks/gpu_tables.py --out $OUT --sections layers,host,model --quick > $OUT/tables.log 2>&1; echo "tables rc=$?"
grep -E "^\| 8192 \| 4096 \| (frozen|lora_r16|jora_diag_oer|jora_diag|jora_block_oer)" $OUT/gpu_results.md
sed -n '/## Model/,$p' $OUT/gpu_results.md | grep "|"
