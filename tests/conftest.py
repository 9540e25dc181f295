"""Shared fixtures: tiny configurations of the real architectures (``vision_node.builder.tiny``), built offline."""

from __future__ import annotations

import logging

import pytest

from vision_node.builder.specs import ShapeBounds
from vision_node.builder.tiny import TINY_ROLES, TINY_SPECS, TINY_VERIFY_SIZES  # noqa: F401 (re-exported to tests)

TINY_BOUNDS = ShapeBounds(min_hw=(64, 64), max_hw=(720, 1280), opt_hw=(128, 128), max_batch=4)


def tiny_plan(out, **overrides):
    from vision_node.builder.pipeline import BuildPlan

    fields = dict(
        out=out,
        weights="demo",
        specs=dict(TINY_ROLES),
        bounds=TINY_BOUNDS,
        max_persons=3,
        verify_sizes=TINY_VERIFY_SIZES,
    )
    fields.update(overrides)
    return BuildPlan(**fields)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """All three capabilities built once with tiny demo models: (out dir, manifest entries as written in JSON)."""
    from vision_node import manifest
    from vision_node.builder import pipeline

    logging.getLogger("build").setLevel(logging.INFO)
    out = tmp_path_factory.mktemp("engines")
    entries, failures = pipeline.build(["depth", "segmentation", "pose"], tiny_plan(out))
    assert not failures, failures
    manifest.write(out, entries)
    return out, {capability: entry.as_dict() for capability, entry in entries.items()}


@pytest.fixture(scope="session")
def compiled_build(tiny_build, tmp_path_factory):
    """A copy of the tiny build whose every graph, fp32 and fp16, TensorRT for RTX's builder compiled (no GPU):
    (directory, compile_check's rows), its figures recorded in the manifest as ``--compile-check`` does."""
    import shutil

    from vision_node.builder import memory
    from vision_node.builder import tensorrt as build_trt

    engines = tmp_path_factory.mktemp("compiled") / "engines"
    shutil.copytree(tiny_build[0], engines)
    rows = build_trt.compile_check(engines, list(tiny_build[1]), workspace_gib=1)
    memory.record_compile_check(engines, rows, workspace_gib=1, max_batch=1)
    return engines, rows


@pytest.fixture(scope="module")
def client(tiny_build):
    """A node on the tiny build behind Starlette's TestClient (real ONNX Runtime), one per test module."""
    from tests.nodes import node_client

    with node_client(tiny_build[0]) as c:
        yield c
