"""The vision node: depth, segmentation and pose conditioning maps per video frame."""

from importlib import metadata

try:
    __version__ = metadata.version("vision-node")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
