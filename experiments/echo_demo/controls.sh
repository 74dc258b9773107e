#!/usr/bin/env bash
# echo-demo on a test split four ways — audio (the clip / silence of its length) x re-listening (on / off) — then each
# run against the one with the audio, item by item (exact McNemar). Resumable: a rerun skips finished evaluations.
#
#   bash experiments/echo_demo/controls.sh DATA_DIR OUT_DIR [MODEL]      # MODEL defaults to echo-demo
#
# DATA_DIR holds the test split (`echo data synth ... --split test`); `echo data audit` gives its no-audio baselines.
set -euo pipefail
data=$1 out=$2 model=${3:-echo-demo}
export TOKENIZERS_PARALLELISM=false
run() {  # name, extra flags
  local name=$1; shift
  [ -f "$out/$name/summary.json" ] && return
  python -m echo eval --benchmark synthetic --data "$data" --model "$model" --out "$out/$name" \
    --max-new-tokens 256 --batch-size 16 --no-progress "$@"
}
run audio-relisten
run audio-norelisten --max-relistens 0
run silence-relisten --audio silence
run silence-norelisten --audio silence --max-relistens 0
for other in audio-norelisten silence-relisten silence-norelisten; do
  python -m echo eval --benchmark synthetic --predictions "$out/audio-relisten" --compare "$out/$other" \
    --out "$out/compare-$other" > /dev/null
done
