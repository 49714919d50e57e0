"""``torchrun --nproc-per-node N -m edgetl finetune`` against one process: wall time of the whole command.

On this project's 2-core machines the ranks share the cores one process already uses (each rank gets one
thread), so the figure says what sharding costs, not what it gains; on N GPUs or N machines each rank has its
own device.  Default: ``data/clothing10`` (713 photos) at 224 px, Lite0, ridge head, eager torch.
Results: ``benchmarks/results/distributed_pass.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import save_result

ROOT = Path(__file__).resolve().parents[1]
CLOTHING = ROOT / "data" / "clothing10"


def run(prefix: list[str], data: str, tmp: Path, name: str, engine: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *prefix, "-m", "edgetl", "-q", "finetune", data, "--out", str(tmp / name),
                    "--cache-dir", str(tmp / f"cache-{name}"), "--head", "ridge", "--engine", engine],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(CLOTHING))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--engine", default="torch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = run([], args.data, tmp, "one", args.engine)
        group = run(["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ranks}"], args.data, tmp,
                    "group", args.engine)
    print(f"finetune {args.data} ({args.engine}): one process {one:.1f} s, {args.ranks} ranks {group:.1f} s "
          f"-> {group / one:.2f}x the wall time")
    path = save_result("distributed_pass", {
        "command": f"python benchmarks/distributed_pass.py --ranks {args.ranks} --engine {args.engine}",
        "data": args.data, "one_process_s": one, "ranks": args.ranks, "group_s": group, "ratio": group / one})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
