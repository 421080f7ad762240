"""Seconds to save and load a checkpoint (agents/checkpoints.py), optionally against the
module of another git revision, in alternating rounds on the same disk.

The checkpoint holds one float32 tensor of ``--mb`` megabytes in ``algorithm`` (as a replay
buffer does) and small entries for the other keys. A load is timed up to a sum over the
tensor, so a mapped file is read in full. Prints one markdown row per round and module.

    python benchmarks/checkpoint_io.py [--mb 400] [--rounds 3] [--against <git revision>]
        [--folder results/checkpoint_io]

``--against fd48e80`` times that revision's ``agents/checkpoints.py`` (format 6) next to this
one (format 7).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import checkpoints  # noqa: E402


def module_at(revision: str, folder: Path) -> ModuleType:
    """``agents/checkpoints.py`` as it was at git ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:agents/checkpoints.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = folder / f"checkpoints_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"checkpoints_{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=400, help="size of the large tensor, MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", default=None, help="git revision to compare with")
    parser.add_argument("--folder", default="results/checkpoint_io",
                        help="where the files are written (removed at the end)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = {f"format {checkpoints.CHECKPOINT_FORMAT} (this tree)": checkpoints}
    if args.against:
        old = module_at(args.against, folder)
        modules = {f"format {old.CHECKPOINT_FORMAT} ({args.against})": old, **modules}
    checkpoint = {key: {"value": torch.arange(5.0)} for key in checkpoints.REQUIRED_KEYS}
    checkpoint.update(global_step=1, config={},
                      algorithm={"buffer": torch.randn(args.mb * 1_000_000 // 4)})
    print(f"{args.mb} MB checkpoint, 1 torch thread, files in {folder}\n")
    print("| round | module | save s | load s |\n|---:|---|---:|---:|")
    try:
        for round_ in range(args.rounds):
            for index, (name, module) in enumerate(modules.items()):
                path = folder / f"checkpoint_{index}.pt"
                content = dict(checkpoint, format=module.CHECKPOINT_FORMAT)
                start = time.perf_counter()
                module.save_checkpoint(content, path)
                saved = time.perf_counter() - start
                start = time.perf_counter()
                float(module.load_checkpoint(path)["algorithm"]["buffer"].sum())
                loaded = time.perf_counter() - start
                print(f"| {round_} | {name} | {saved:.2f} | {loaded:.2f} |", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
