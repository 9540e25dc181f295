"""The manifest the build writes: what the server will trust."""

import json

from vision_node import manifest
from vision_node.builder.specs import CAPABILITIES


def test_manifest_lists_every_artefact_with_its_hash_and_provenance(tiny_build):
    out, _ = tiny_build
    written = manifest.load(out)
    assert written["format"] == manifest.FORMAT
    assert {"torch", "transformers", "onnx", "onnxruntime", "python"} <= set(written["tools"])
    assert set(written["capabilities"]) == set(CAPABILITIES)
    for entry in written["capabilities"].values():
        assert entry["demo"] is True and entry["opset"] >= 17
        assert entry["bounds"]["max_hw"] == [720, 1280] and entry["bounds"]["min_hw"] == [64, 64]
        assert entry["verification"]["checks"]
        for graph in entry["graphs"]:
            path = out / graph["path"]
            assert path.is_file() and manifest.sha256(path) == graph["sha256"]
            assert graph["bytes"] == path.stat().st_size
        for model in entry["models"]:
            assert model["weights"] == "demo" and model["licence"] and model["hf_id"] and model["parameters"] > 0
    pose_roles = [m["role"] for m in written["capabilities"]["pose"]["models"]]
    assert pose_roles == ["detector", "pose"]
    assert written["capabilities"]["segmentation"]["options"]["num_classes"] == 150


def test_writing_one_capability_keeps_the_others(tmp_path, tiny_build):
    out, entries = tiny_build
    (tmp_path / manifest.MANIFEST_NAME).write_text((out / manifest.MANIFEST_NAME).read_text())
    manifest.write(tmp_path, {"depth": {**entries["depth"], "graphs": []}})
    merged = json.loads((tmp_path / manifest.MANIFEST_NAME).read_text())["capabilities"]
    assert merged["depth"]["graphs"] == [] and merged["pose"] == json.loads(json.dumps(entries["pose"]))


def test_every_output_dimension_is_a_frame_dimension_or_fixed(tiny_build):
    """The server sizes its buffers from these; pose's person slots must be the number, not a name."""
    _, entries = tiny_build
    for capability, entry in entries.items():
        for graph in entry["graphs"]:
            for out in graph["outputs"]:
                for dim in out["shape"]:
                    assert isinstance(dim, int) or dim in ("batch", "height", "width"), (capability, out)
    pose = entries["pose"]["graphs"][0]["outputs"]
    assert [o["shape"] for o in pose] == [["batch", 3, 4], ["batch", 3], ["batch", 3, 17, 2], ["batch", 3, 17]]
