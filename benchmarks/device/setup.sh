# Sourced by the device-tool run scripts here (repository root): the carried wheels (.whl/, e.g. aenum)
# into /tmp/site, and the packages, tests and benchmarks on PYTHONPATH from the working tree.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:packages/jora-ops/src:packages/jora-core/src:packages/jora-peft/src:tests:benchmarks
export PYTHONUNBUFFERED=1
