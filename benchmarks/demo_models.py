"""A manifest's model by name, with the seeded demo weights it was built from, in transformers.

The transformers side of the benchmarks: the eager baseline beside the graphs (``engine``) and the
reference parity compares the node's answers with (``parity``). Needs the export extra.
"""

from __future__ import annotations


def demo_model(name: str):
    """The demo weights of ``name`` (a model of ``SPECS``, or of ``TINY_SPECS`` with its ``-tiny`` suffix)."""
    from vision_node.builder import weights
    from vision_node.builder.specs import SPECS
    from vision_node.builder.tiny import TINY_SPECS

    spec = TINY_SPECS[name.removesuffix("-tiny")] if name.endswith("-tiny") else SPECS[name]
    return weights.load_demo(spec)
