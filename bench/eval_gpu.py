"""Issue 8's GPU check: train `stargan` and `ours` for the same iterations on the 600 real faces, evaluate
both, compare them, and print the table and the time per 1,000 generated images of each.

The four character folders of assets/faces stand in for four expression classes (identity labels, not
expressions: expression accuracy here measures whether a translation reaches the target *character*).
No VGG19 weights can reach the device, so `ours` trains its contextual loss on random VGG features, and the
log says so. Run through bench/eval_gpu.sh, which also brings the Inception weights to the device.

    python3 bench/eval_gpu.py --faces DIR --work DIR --out DIR [--iters 3000] [--test-per-class 30]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from animexpr.model.classifier import ClassifierConfig
from animexpr.model.compare import compare_runs
from animexpr.model.data import write_folder_snapshot
from animexpr.model.evaluate import EvalOptions, evaluate_run
from animexpr.model.run import config_for_run
from animexpr.model.run_files import EVAL_JSON, EVAL_TABLE
from animexpr.model.train import train

VARIANTS = ("stargan", "ours")


# A CPU smoke run of this script (`--device cpu --tiny`): the widths of the CPU tests, 32 px.
TINY = {
    "image_size": 32,
    "batch": 2,
    "n_critic": 2,
    "g_conv_dim": 8,
    "g_res_blocks": 1,
    "att_res_blocks": 1,
    "d_conv_dim": 8,
    "d_repeat_num": 4,
    "mapping_dim": 16,
    "style_dim": 8,
    "cx_layer": "relu3_2",
}


def train_run(snapshot: Path, runs_root: Path, variant: str, iters: int, device: str, tiny: bool) -> Path:
    settings = {
        "variant": variant,
        "iters": iters,
        "decay_start": iters,
        "vgg_random": True,
        "log_every": 100,
        "sample_every": max(iters // 4, 1),
        "ckpt_every": iters,
        "device": device,
        "precision": "tf32",
        **(TINY if tiny else {}),
    }
    started = time.perf_counter()
    try:
        result = train(config_for_run(snapshot, **settings), runs_root)
    except Exception:  # a CUDA-graph failure must not cost the whole device session
        logging.exception("%s with CUDA graphs failed; again without them", variant)
        result = train(config_for_run(snapshot, cuda_graphs=False, **settings), runs_root)
    print(
        f"trained {variant}: {iters} iterations in {time.perf_counter() - started:.0f} s -> {result.run_dir}"
    )
    return result.run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=Path, required=True, help="folder of class folders (assets/faces)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="test images per generator batch")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and classifier: a CPU smoke run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 1
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    shutil.rmtree(args.work, ignore_errors=True)
    snapshot = write_folder_snapshot(args.faces, args.work / "faces4", test_per_class=args.test_per_class)
    runs = [train_run(snapshot, args.work / "runs", v, args.iters, args.device, args.tiny) for v in VARIANTS]
    classifier = ClassifierConfig(width=8, blocks_per_stage=1, epochs=2) if args.tiny else ClassifierConfig()
    options = EvalOptions(
        device=args.device, batch=args.batch, cache_dir=args.work / "cache", classifier=classifier
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for variant, run_dir in zip(VARIANTS, runs, strict=True):
        started = time.perf_counter()
        report = evaluate_run(run_dir, options=options)
        print(f"evaluated {variant} in {time.perf_counter() - started:.1f} s")
        print((run_dir / EVAL_TABLE).read_text(encoding="utf-8"))
        shutil.copyfile(run_dir / EVAL_JSON, args.out / f"eval-{variant}.json")
        timing = report["timing"]
        print(
            f"{variant}: {timing['generation_ms_per_1000']:.0f} ms per 1,000 generated images (generator), "
            f"{timing['translate_and_score_ms_per_1000']:.0f} ms with Inception, classifier and PNGs "
            f"({report['generated_images']} images)"
        )
    comparison = compare_runs(runs, args.out / "report.md", rows=8)
    print(comparison.markdown)
    samples = sorted((runs[-1] / "samples").glob("*.png"))
    if samples:
        shutil.copyfile(samples[-1], args.out / f"samples-ours-{samples[-1].name}")
    stargan, ours = (json.loads((r / EVAL_JSON).read_text())["timing"] for r in runs)
    ratio = ours["generation_ms_per_1000"] / max(stargan["generation_ms_per_1000"], 1e-9)
    print(f"generation time per image, ours / stargan: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
