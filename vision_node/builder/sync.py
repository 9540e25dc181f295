"""``python -m vision_node.builder.sync IMAGE_DIR CACHE_DIR``: bring a container image's graphs into the engine cache.

The image carries the ONNX graphs (fp32 and fp16, and ONNX Runtime's optimised copy) and their
manifest; the cache (a mounted volume) keeps the TensorRT engines between starts. A graph whose
SHA-256 changed is copied over and its engines are dropped from the list (they were built from the
old graph); engines of unchanged graphs stay, so the next start only deserialises. Torch-free: it
runs in the runtime image.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .. import manifest


def sync(source: Path, target: Path) -> list[str]:
    """Copy what changed; return the files copied."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    image = manifest.read(source)
    try:
        cached = manifest.read(target).capabilities
    except (OSError, ValueError):  # none yet, or another schema's: its engines are not this image's
        cached = {}
    engines = [e for c in cached.values() for g in c.graphs for e in g.tensorrt]
    copied = []
    for entry in image.capabilities.values():
        for graph in entry.graphs:
            for file in graph.artefacts:
                path = target / file.path
                if not path.exists() or manifest.sha256(path) != file.sha256:
                    shutil.copyfile(source / file.path, path)
                    copied.append(file.path)
            # An engine stays listed while the file it was built from is unchanged.
            graph.tensorrt = [e for e in engines if e.onnx_sha256 in graph.engine_sources]
    manifest.write(target, image.capabilities, merge=False)  # exactly the image's capabilities
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m vision_node.builder.sync IMAGE_ENGINES_DIR CACHE_ENGINES_DIR")
    changed = sync(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"engine cache {sys.argv[2]}: {', '.join(changed) or 'graphs unchanged'}")
