"""Training speed of every variant: median ms per iteration and peak memory, at the paper's settings.

    python bench/train_speed.py [--variants ours stargan] [--modes graphs eager] [--precisions tf32 bf16]

Batch 16, 128 px, n_critic 5 by default, on real crops from $ANIMEXPR_ASSETS/faces (synthetic images when it
is unset). One iteration = one D step, plus a G step every n_critic-th. Timed in windows of whole n_critic
cycles after a warm-up; the median window is reported. Ratios: against the reference figures measured on an
H100 (official StarGAN code 44 ms, a straightforward eager version of the paper's full model 36 ms), and
against this process's own eager run of the same variant and precision (the baseline measured here).
VGG19 has random weights here: the contextual loss costs the same with any weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from animexpr.model.config import VARIANTS, TrainConfig
from animexpr.model.data import FaceBatches, decode_face
from animexpr.model.device import resolve_device
from animexpr.model.train import Trainer, configure_backends
from animexpr.model.vgg import load_vgg19_features

REFERENCE_MS = {"stargan": 44.0, "ours": 36.0}  # official StarGAN code; eager paper model (H100, one run)


def load_faces(image_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    assets = os.environ.get("ANIMEXPR_ASSETS")
    faces_root = Path(assets) / "faces" if assets else None
    if faces_root is None or not faces_root.is_dir():
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(
            0, 256, (512, image_size, image_size, 3), dtype=torch.uint8, generator=generator
        )
        return images, torch.arange(512) % 4, "synthetic images (ANIMEXPR_ASSETS unset)"
    images, labels = [], []
    for label, folder in enumerate(sorted(p for p in faces_root.iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir()):
            images.append(torch.from_numpy(decode_face(path.read_bytes(), image_size, str(path)).copy()))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels), f"{len(images)} real crops from {faces_root}"


def measure(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, warmup: int, windows: int) -> dict:
    device = torch.device(cfg.device)
    configure_backends(cfg, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    batches = FaceBatches(images, labels, int(labels.max()) + 1, device, channels_last=cfg.channels_last)
    vgg = (
        load_vgg19_features(cfg.cx_layer, random_weights=True)
        if cfg.spec.identity_loss == "contextual"
        else None
    )
    trainer = Trainer(cfg, batches, device, vgg=vgg)
    started = time.perf_counter()
    trainer.prepare()
    for _ in range(warmup * cfg.n_critic):
        trainer.run_iteration()
    trainer.flush_stats()  # synchronises; also proves the losses are finite
    setup_s = time.perf_counter() - started
    # Setup peak includes cuDNN's autotuner trying algorithms with large workspaces (first run in a process);
    # the training peak is what steady training holds.
    setup_peak = _peak_mib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_window = 4 * cfg.n_critic
    window_ms = []
    for _ in range(windows):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(per_window):
            trainer.run_iteration()
        _sync(device)
        window_ms.append(1000 * (time.perf_counter() - t0) / per_window)
    stats = trainer.flush_stats()
    counts = trainer.parameter_counts()
    result = {
        "variant": cfg.variant,
        "mode": ("compile+" if cfg.compile else "") + ("graphs" if trainer.use_graphs else "eager"),
        "precision": cfg.precision,
        "ms_per_iter": statistics.median(window_ms),
        "ms_min": min(window_ms),
        "ms_max": max(window_ms),
        "peak_mem_mib": _peak_mib(device),
        "setup_peak_mib": setup_peak,
        "setup_s": setup_s,
        "params_G": counts["G"],
        "params_D": counts["D"],
        "finite_losses": all(v == v for v in stats.values()),
    }
    del trainer, batches, vgg
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--modes", nargs="+", default=["graphs", "eager"], choices=["graphs", "eager", "compile"]
    )
    parser.add_argument("--precisions", nargs="+", default=["tf32"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--n-critic", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=4, help="n_critic cycles before timing")
    parser.add_argument("--windows", type=int, default=15, help="timed windows of 4 n_critic cycles each")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU-sized networks (a smoke test of this script)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.device = str(resolve_device(args.device))

    images, labels, source = load_faces(args.image_size)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}; data: {source}")
    print(f"batch {args.batch}, {args.image_size} px, n_critic {args.n_critic}; VGG19 random weights")
    tiny: dict[str, int] = {
        "g_conv_dim": 8,
        "d_conv_dim": 8,
        "d_repeat_num": 4,
        "mapping_dim": 16,
        "style_dim": 8,
    }
    tiny = tiny if args.tiny else {}
    rows = []
    for precision in args.precisions:
        for variant in args.variants:
            for mode in args.modes:
                cfg = TrainConfig(
                    data="",
                    variant=variant,
                    batch=args.batch,
                    image_size=args.image_size,
                    n_critic=args.n_critic,
                    precision=precision,
                    device=args.device,
                    cuda_graphs=mode in ("graphs", "compile"),
                    compile=mode == "compile",
                    vgg_random=True,
                    **tiny,
                )
                try:
                    row = measure(cfg, images, labels, args.warmup, args.windows)
                except Exception as exc:  # one failing configuration must not hide the others
                    print(f"{variant} {mode} {precision}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
                rows.append(row)
                print(
                    f"{variant:11s} {row['mode']:15s} {precision:5s} {row['ms_per_iter']:7.2f} ms/iter "
                    f"(min {row['ms_min']:.2f}, max {row['ms_max']:.2f})  peak {row['peak_mem_mib']:7.0f} MiB"
                    f"  setup {row['setup_s']:.1f} s (peak {row['setup_peak_mib']:.0f} MiB)",
                    flush=True,
                )
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


def _print_table(rows: list[dict]) -> None:
    eager = {(r["variant"], r["precision"]): r["ms_per_iter"] for r in rows if r["mode"] == "eager"}
    print("\npeak = training peak after warm-up; setup (capture, cuDNN autotuning) is printed per row above")
    print("variant      mode            prec   ms/iter  peak MiB  vs reference      vs own eager")
    for r in rows:
        reference = REFERENCE_MS.get(r["variant"])
        vs_ref = f"{r['ms_per_iter'] / reference:.2f}x of {reference:.0f} ms" if reference else "-"
        base = eager.get((r["variant"], r["precision"]))
        vs_eager = f"{base / r['ms_per_iter']:.2f}x faster" if base and r["mode"] != "eager" else "-"
        print(
            f"{r['variant']:11s}  {r['mode']:15s} {r['precision']:5s} {r['ms_per_iter']:8.2f} "
            f"{r['peak_mem_mib']:9.0f}  {vs_ref:16s}  {vs_eager}"
        )


if __name__ == "__main__":
    sys.exit(main())
