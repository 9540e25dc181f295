"""The manifest the build writes: what the server will trust."""

import dataclasses
import json

import pytest

from vision_node import manifest
from vision_node.builder.specs import CAPABILITIES
from vision_node.errors import StartupError
from vision_node.serving.engines import load


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
            # and every file made from it: its TensorRT variants (fp32, fp16), its fp16 twin, ONNX Runtime's copy
            made = [graph["tensorrt_onnx"], graph["fp16"], graph["fp16"]["tensorrt_onnx"], graph["onnxruntime"]]
            assert [f["path"] for f in made] == [
                graph["path"].replace(".onnx", suffix)
                for suffix in (".trt.onnx", ".fp16.onnx", ".fp16.trt.onnx", ".ort.onnx")
            ]
            for file in made:
                assert manifest.sha256(out / file["path"]) == file["sha256"]
                assert file["bytes"] == (out / file["path"]).stat().st_size
        for model in entry["models"]:
            assert model["weights"] == "demo" and model["licence"] and model["hf_id"] and model["parameters"] > 0
    pose_roles = [m["role"] for m in written["capabilities"]["pose"]["models"]]
    assert pose_roles == ["detector", "pose"]
    assert written["capabilities"]["segmentation"]["options"]["num_classes"] == 150


def test_writing_one_capability_keeps_the_others(tmp_path, tiny_build):
    out, entries = tiny_build
    (tmp_path / manifest.MANIFEST_NAME).write_text((out / manifest.MANIFEST_NAME).read_text())
    depth = manifest.read(out).capabilities["depth"]
    manifest.write(tmp_path, {"depth": dataclasses.replace(depth, graphs=[])})
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


def test_a_manifest_of_another_schema_is_refused_naming_the_file_and_its_version(tiny_build, tmp_path):
    data = json.loads((tiny_build[0] / manifest.MANIFEST_NAME).read_text())
    data["format"] = 1
    (tmp_path / manifest.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError) as refused:
        manifest.read(tmp_path)
    message = str(refused.value)
    assert str(tmp_path / manifest.MANIFEST_NAME) in message and "schema 1" in message
    assert f"reads schema {manifest.FORMAT}" in message and "rebuild" in message
    with pytest.raises(StartupError) as stopped:  # the node stops at start with the same words
        load(tmp_path)
    assert str(stopped.value) == message


def test_the_typed_manifest_writes_back_the_json_it_read(tiny_build, tmp_path):
    """read and write round-trip: every key the build wrote survives (no field of the schema is lost)."""
    out, _ = tiny_build
    manifest.write(tmp_path, manifest.read(out).capabilities)
    written = json.loads((out / manifest.MANIFEST_NAME).read_text())["capabilities"]
    assert json.loads((tmp_path / manifest.MANIFEST_NAME).read_text())["capabilities"] == written


def test_a_malformed_entry_names_the_file_and_the_capability(tiny_build, tmp_path):
    data = json.loads((tiny_build[0] / manifest.MANIFEST_NAME).read_text())
    del data["capabilities"]["pose"]["graphs"][0]["sha256"]
    (tmp_path / manifest.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(manifest.ManifestError, match=r"manifest\.json: pose: malformed entry .*sha256"):
        manifest.read(tmp_path)
    assert set(manifest.read(tmp_path, only=("depth",)).capabilities) == {"depth"}  # the others are not read
