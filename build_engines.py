#!/usr/bin/env python3
"""Build step: Hugging Face models -> verified ONNX graphs + engines/manifest.json. See --help."""

import sys

from vision_node.builder.cli import main

if __name__ == "__main__":
    sys.exit(main())
