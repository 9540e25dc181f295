#!/bin/sh
# Start the vision node in its container. Each step is a plain shell step too (docs/operating.md, "Docker").
set -eu
IMAGE_ENGINES="${IMAGE_ENGINES:-/opt/vision-node/engines}"          # graphs exported at image build
export VISION_NODE_ENGINES="${VISION_NODE_ENGINES:-/cache/engines}"  # volume: engines kept per GPU
export VISION_NODE_HOST="${VISION_NODE_HOST:-0.0.0.0}"
export VISION_NODE_BACKEND="${VISION_NODE_BACKEND:-tensorrt}"

# 1. The image's graphs into the cache; engines of unchanged graphs are kept.
python -m vision_node.builder.sync "$IMAGE_ENGINES" "$VISION_NODE_ENGINES"
# 2. Engines: reused when they match, built otherwise (TensorRT: for this GPU, checked against ONNX
#    Runtime; TensorRT for RTX: ahead of time, specialised on the card at the first run).
case "$VISION_NODE_BACKEND" in
    tensorrt) vision-node-build --tensorrt-only --out "$VISION_NODE_ENGINES" ;;
    tensorrt-rtx) vision-node-build --tensorrt-only --tensorrt-rtx --out "$VISION_NODE_ENGINES" ;;
esac
# 3. Serve; registers with the orchestrator once warm when VISION_NODE_ORCHESTRATOR_URL is set.
exec vision-node serve
