"""Rewrites of ONNX graphs after export, each for one runtime's artefact (the map: ``builder/README.md``).

- ``gated``: joins a gated graph's head and tail under an ``If`` (pose), at export: every artefact.
- ``selects``: the TensorRT variant (``*.trt.onnx``): shape-decided ``If``s and the pose gate as selects,
  the uint8 frame cast first.

``graph`` is what they share: producer and reader maps, subgraph walks, attributes, stored tensors.
"""
