"""Turn a pytest-benchmark JSON file into a markdown table of ratios to the frozen layer and LoRA r16.

Usage: ``python benchmarks/summarize.py results.json > results.md``
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def main(path: str) -> str:
    data = json.loads(Path(path).read_text())
    rows = {b["param"]: b for b in data["benchmarks"] if b["param"]}
    paired = [b for b in data["benchmarks"] if not b["param"]]
    frozen = rows["frozen"]["stats"]["median"]
    lora = rows["lora_r16"]["stats"]["median"]
    machine = data.get("machine_info", {})
    lines = [
        f"Date: {data.get('datetime', '?')}  ",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python {machine.get('python_version', '?')}  ",
        f"Group: {next(iter(rows.values()))['group']}",
        "",
        "| method | trainable | median ms | × frozen | × LoRA r16 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, bench in rows.items():
        median = bench["stats"]["median"]
        lines.append(
            f"| {name} | {bench['extra_info'].get('trainable', 0):,} | {median * 1e3:.2f} | "
            f"{median / frozen:.2f} | {median / lora:.2f} |"
        )
    for bench in paired:
        lines += ["", f"{bench['group']} (one process, interleaved, after a warm-up):"]
        lines += [f"- {key}: {value}" for key, value in bench["extra_info"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1]))
