"""The insightface backend without real weights: a tiny ONNX graph with SCRFD's inputs and outputs (built
here with onnx.helper) runs through insightface's own SCRFD class; and the one-line error when the pack
is missing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_stage, tiny_config

from facecaption.core.shards import read_parquet
from facecaption.faces.detect import InsightFaceDetector, ModelMissing, find_insightface_model

K = 64  # the fake detector "finds" bright K×K squares (in detector-input pixels)
STRIDES = (8, 16, 32)
# landmark offsets from the box centre, as a share of K: left eye, right eye, nose, mouth left, mouth right
LM = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.05], [-0.15, 0.2], [0.15, 0.2]])


def fake_scrfd(path) -> str:
    """An ONNX graph shaped like SCRFD with keypoints (det_10g.onnx of buffalo_l): input ``input.1``
    (1, 3, H, W), nine rank-2 outputs: scores (N, 1), boxes (N, 4), keypoints (N, 10) for strides 8/16/32 with
    two anchors per cell. Its score at an anchor is high when the K×K window centred there is bright."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inits, outputs = [], [], []

    def const(name, values, dtype=np.float32):
        arr = np.asarray(values, dtype=dtype)
        inits.append(helper.make_tensor(name, TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64,
                                        arr.shape, arr.ravel().tolist()))
        return name

    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1))
    const("thr", [0.85])
    const("gain", [40.0])
    const("zero", [0.0])
    const("shape_col", [-1, 1], np.int64)
    scores, boxes, kps = [], [], []
    for s in STRIDES:
        h = K // 2
        nodes += [
            helper.make_node("AveragePool", ["gray"], [f"pool{s}"], kernel_shape=[K, K], strides=[s, s],
                             pads=[h, h, h - s, h - s], count_include_pad=1),
            helper.make_node("Sub", [f"pool{s}", "thr"], [f"d{s}"]),
            helper.make_node("Mul", [f"d{s}", "gain"], [f"l{s}"]),
            helper.make_node("Sigmoid", [f"l{s}"], [f"sig{s}"]),
            helper.make_node("Reshape", [f"sig{s}", "shape_col"], [f"flat{s}"]),
            helper.make_node("Concat", [f"flat{s}", f"flat{s}"], [f"two{s}"], axis=1),
            helper.make_node("Reshape", [f"two{s}", "shape_col"], [f"score_{s}"]),
            helper.make_node("Mul", [f"score_{s}", "zero"], [f"z{s}"]),
            helper.make_node("Add", [f"z{s}", const(f"bb{s}", [[h / s] * 4])], [f"bbox_{s}"]),
            helper.make_node("Add", [f"z{s}", const(f"kp{s}", [(LM * K / s).ravel()])], [f"kps_{s}"]),
        ]
        scores.append(helper.make_tensor_value_info(f"score_{s}", TensorProto.FLOAT, ["N", 1]))
        boxes.append(helper.make_tensor_value_info(f"bbox_{s}", TensorProto.FLOAT, ["N", 4]))
        kps.append(helper.make_tensor_value_info(f"kps_{s}", TensorProto.FLOAT, ["N", 10]))
    outputs = scores + boxes + kps
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph(nodes, "fake_scrfd", [inp], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def square_image(size=160, centre=(64, 64), side=32):
    img = np.zeros((size, size, 3), dtype=np.uint8)
    cx, cy = centre
    img[cy - side // 2: cy + side // 2, cx - side // 2: cx + side // 2] = 255
    return img


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    return fake_scrfd(tmp_path_factory.mktemp("pack") / "det_fake.onnx")


def _ins(model_file, **kw):
    return {"model_dir": "/nonexistent", "pack": "buffalo_l", "model_file": model_file, "det_size": 320,
            "nms_iou": 0.4, "device": "cpu", **kw}


def test_adapter_runs_insightface_scrfd_on_a_graph_with_its_io(fake_model):
    det = InsightFaceDetector(_ins(fake_model), threads=1)
    assert det.model.use_kps and det.model.fmc == 3  # insightface read the graph as a 9-output SCRFD
    # a 160 px image letterboxed into 320: the 32 px square becomes K = 64 px in detector space
    (faces,) = det.detect([square_image()], threshold=0.3)
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.98
    np.testing.assert_allclose(f.box, (48, 48, 80, 80), atol=0.5)
    np.testing.assert_allclose(f.landmarks, np.array([64, 64]) + LM * 32, atol=0.5)  # back in image pixels
    # nothing to find in a dark image
    assert det.detect([np.zeros((100, 140, 3), np.uint8)], threshold=0.3) == [[]]


def test_faces_stage_with_insightface_backend(workdir, fake_model):
    from test_faces import write_collect_shard

    images = {"sq": square_image(), "dark": np.zeros((96, 96, 3), np.uint8)}
    write_collect_shard("00000", images)
    cfg = tiny_config(faces={"detector": "insightface", "min_size": 16,
                             "min_score": {"insightface": 0.98}, "insightface": _ins(fake_model)})
    assert run_stage("faces", cfg, "00000") == 0
    faces = read_parquet("results/faces/00000.parquet")
    assert list(faces.image_key) == ["00000_sq"] and faces.detector.iloc[0] == "insightface"
    rec = read_parquet("results/faces/00000.records.parquet").set_index(["image_key", "face"])
    assert rec.loc[("00000_dark", -1), "reason"] == "no_face"


def test_missing_pack_stops_with_one_line_naming_the_folder(workdir, capsys, tmp_path):
    models = tmp_path / "models"
    cfg = tiny_config(faces={"detector": "insightface", "insightface": {"model_dir": str(models), "pack": "buffalo_l"}})
    from test_faces import write_collect_shard

    write_collect_shard("00000", {"a": np.zeros((64, 64, 3), np.uint8)})
    assert run_stage("faces", cfg, "00000") == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = [ln for ln in err if "insightface" in ln]
    assert len(line) == 1, err
    assert str(models / "buffalo_l") in line[0]
    assert "FaceAnalysis(name='buffalo_l'" in line[0] and "buffalo_l.zip" in line[0]


def test_find_model_in_pack_folder(tmp_path, fake_model):
    import shutil

    (tmp_path / "buffalo_s").mkdir()
    with pytest.raises(ModelMissing, match="buffalo_s"):
        find_insightface_model({"model_dir": str(tmp_path), "pack": "buffalo_s", "model_file": None})
    shutil.copy(fake_model, tmp_path / "buffalo_s" / "det_500m.onnx")
    assert find_insightface_model({"model_dir": str(tmp_path), "pack": "buffalo_s", "model_file": None}).endswith(
        "buffalo_s/det_500m.onnx")
    with pytest.raises(ModelMissing, match="does not exist"):
        find_insightface_model({"model_dir": str(tmp_path), "pack": "x", "model_file": str(tmp_path / "no.onnx")})
