#!/usr/bin/env bash
# Issue 8's GPU check (bench/eval_gpu.py) on a device machine, in three steps.
#
# The Inception TorchScript is 87,335,461 bytes and a device call carries at most 64 MiB, and the device reaches
# no network: the file travels in two parts over two calls on the same warm machine (it stays warm ~30 s after a
# call: make the second call at once), is joined there and checked against its pinned sha256.
#
#   1. here:   ANIMEXPR_ASSETS=../shared/assets bash bench/eval_gpu.sh prepare
#              (writes .evalgpu-a/ = part 1 + the 600 faces, .evalgpu-b/ = part 2; both git-ignored locally)
#   2. device: run(command="bash bench/eval_gpu.sh stage", carry=[".evalgpu-a"], timeout_s=120)
#   3. device: run(command="ITERS=3000 bash bench/eval_gpu.sh run", carry=[".evalgpu-b"], timeout_s=600)
#              -> $OUT: report.md, report.png (the figure), eval-stargan.json, eval-ours.json, a sample grid, log
#
# Step 3 trains both variants for ITERS iterations (batch 16, 128 px, n_critic 5, tf32, CUDA graphs), so its
# time is about 2 * ITERS * ms-per-iteration + start-up; 3000 iterations at ~35 ms fit well in 10 minutes.
set -euo pipefail
SPLIT_AT=41000000  # bytes of the weights in part 1 (part 1 + faces ~ 59 MB, part 2 ~ 46 MB)
SHA256=7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34
STAGE=/tmp/evalgpu

case "${1:-}" in
prepare)
  : "${ANIMEXPR_ASSETS:?set ANIMEXPR_ASSETS to the assets folder (it holds faces/)}"
  grep -qxF '/.evalgpu-a/' .git/info/exclude || echo '/.evalgpu-a/' >>.git/info/exclude
  grep -qxF '/.evalgpu-b/' .git/info/exclude || echo '/.evalgpu-b/' >>.git/info/exclude
  weights=$(.venv/bin/python -m animexpr.model.inception)
  rm -rf .evalgpu-a .evalgpu-b && mkdir -p .evalgpu-a .evalgpu-b
  head -c "$SPLIT_AT" "$weights" >.evalgpu-a/inception.part1
  tail -c +"$((SPLIT_AT + 1))" "$weights" >.evalgpu-b/inception.part2
  cp -r "$ANIMEXPR_ASSETS/faces" .evalgpu-a/faces
  du -sb .evalgpu-a .evalgpu-b
  ;;
stage)
  rm -rf "$STAGE" && mkdir -p "$STAGE"
  cp -r .evalgpu-a/. "$STAGE/"
  ls -la "$STAGE"
  ;;
run)
  export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONPATH="$PWD/src"
  [ -f "$STAGE/inception.part1" ] || { echo "no $STAGE/inception.part1: run the stage step first, on this machine"; exit 1; }
  cat "$STAGE/inception.part1" .evalgpu-b/inception.part2 >"$STAGE/inception.pt"
  echo "$SHA256  $STAGE/inception.pt" | sha256sum -c -
  export ANIMEXPR_INCEPTION="$STAGE/inception.pt"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 bench/eval_gpu.py --faces "$STAGE/faces" --work "$STAGE/work" --out "$OUT" \
    --iters "${ITERS:-3000}" 2>&1 | tee "$OUT/eval_gpu.log"
  ;;
*)
  echo "usage: bash bench/eval_gpu.sh prepare|stage|run (see the comments at the top)" >&2
  exit 2
  ;;
esac
