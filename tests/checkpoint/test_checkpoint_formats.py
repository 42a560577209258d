"""DetectionCheckpointer: pre-trained formats, renaming rules, weights_only loading, errors.

All checkpoints are written by the tests themselves into tmp_path.
"""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detrex.checkpoint import DetectionCheckpointer
from detrex.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_torchvision_resnet_names,
)


class _Block(nn.Module):
    def __init__(self, c, shortcut=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.conv1.norm = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2.norm = nn.BatchNorm2d(c)
        if shortcut:
            self.shortcut = nn.Conv2d(c, c, 1, bias=False)
            self.shortcut.norm = nn.BatchNorm2d(c)


class _D2Backbone(nn.Module):
    """detectron2-style names: stem.conv1(.norm), res2.0.conv1(.norm), res2.0.shortcut(.norm)."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv1 = nn.Conv2d(3, c, 3, bias=False)
        self.stem.conv1.norm = nn.BatchNorm2d(c)
        self.res2 = nn.Sequential(_Block(c, shortcut=True), _Block(c))


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _D2Backbone()
        self.head = nn.Linear(4, 2)


def _torchvision_style_state(c=4, gen=None):
    """A torchvision-ResNet-layout state dict (random values) matching _D2Backbone's shapes."""
    g = gen or torch.Generator().manual_seed(0)
    sd = {"conv1.weight": torch.randn(c, 3, 3, 3, generator=g)}

    def bn(prefix):
        sd[prefix + ".weight"] = torch.rand(c, generator=g)
        sd[prefix + ".bias"] = torch.rand(c, generator=g)
        sd[prefix + ".running_mean"] = torch.rand(c, generator=g)
        sd[prefix + ".running_var"] = torch.rand(c, generator=g) + 0.5
        sd[prefix + ".num_batches_tracked"] = torch.tensor(7)

    bn("bn1")
    for b in (0, 1):
        sd[f"layer1.{b}.conv1.weight"] = torch.randn(c, c, 1, 1, generator=g)
        bn(f"layer1.{b}.bn1")
        sd[f"layer1.{b}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g)
        bn(f"layer1.{b}.bn2")
    sd["layer1.0.downsample.0.weight"] = torch.randn(c, c, 1, 1, generator=g)
    bn("layer1.0.downsample.1")
    sd["fc.weight"] = torch.randn(10, 8, generator=g)
    sd["fc.bias"] = torch.randn(10, generator=g)
    return sd


@pytest.fixture
def detrex_caplog(caplog, monkeypatch):
    """caplog that also sees "detrex.*" records after setup_logger turned propagation off."""
    import logging

    monkeypatch.setattr(logging.getLogger("detrex"), "propagate", True)
    return caplog


def test_torchvision_renaming_rules():
    renamed = convert_torchvision_resnet_names(_torchvision_style_state())
    expected = {
        "stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.running_var",
        "res2.0.conv1.weight", "res2.0.conv1.norm.bias", "res2.1.conv2.norm.running_mean",
        "res2.0.shortcut.weight", "res2.0.shortcut.norm.weight", "stem.fc.weight",
    }
    assert expected <= set(renamed)
    assert not any("num_batches_tracked" in k for k in renamed)
    assert not any(k.startswith(("layer", "bn1", "conv1.")) for k in renamed)


def test_c2_renaming_rules():
    names = ["res2_0_branch2a_w", "res_conv1_bn_s", "res_conv1_bn_b", "conv1_w",
             "res2_0_branch1_w", "res2_0_branch1_bn_s", "res2_0_branch2c_bn_b",
             "res3_1_branch2b_bn_rm", "res3_1_branch2b_bn_riv"]
    assert convert_basic_c2_names(names) == [
        "res2.0.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.bias",
        "stem.conv1.weight", "res2.0.shortcut.weight", "res2.0.shortcut.norm.weight",
        "res2.0.conv3.norm.bias", "res3.1.conv2.norm.running_mean",
        "res3.1.conv2.norm.running_var",
    ]


def test_load_torchvision_pth_into_backbone(tmp_path):
    sd = _torchvision_style_state()
    path = tmp_path / "resnet_tv.pth"
    torch.save(sd, path)
    model = _Detector()
    head_before = model.head.weight.clone()
    DetectionCheckpointer(model).load(str(path))
    msd = model.state_dict()
    assert torch.equal(msd["backbone.stem.conv1.weight"], sd["conv1.weight"])
    assert torch.equal(msd["backbone.stem.conv1.norm.running_var"], sd["bn1.running_var"])
    assert torch.equal(msd["backbone.res2.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert torch.equal(msd["backbone.res2.1.conv2.norm.weight"], sd["layer1.1.bn2.weight"])
    assert torch.equal(msd["backbone.res2.0.shortcut.weight"], sd["layer1.0.downsample.0.weight"])
    assert torch.equal(msd["backbone.res2.0.shortcut.norm.bias"],
                       sd["layer1.0.downsample.1.bias"])
    assert torch.equal(model.head.weight, head_before)  # not in the checkpoint


def test_load_torchvision_pth_into_torchvision_named_model(tmp_path):
    """A model that keeps torchvision names (backbone.body.*) is filled without renaming."""
    sd = {"conv1.weight": torch.randn(4, 3, 3, 3), "layer1.0.conv1.weight": torch.randn(4, 4, 1, 1)}
    torch.save(sd, tmp_path / "tv.pth")
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.body = nn.Module()
    model.backbone.body.conv1 = nn.Conv2d(3, 4, 3, bias=False)
    model.backbone.body.layer1 = nn.Sequential(nn.Module())
    model.backbone.body.layer1[0].conv1 = nn.Conv2d(4, 4, 1, bias=False)
    DetectionCheckpointer(model).load(str(tmp_path / "tv.pth"))
    assert torch.equal(model.backbone.body.conv1.weight, sd["conv1.weight"])
    assert torch.equal(model.backbone.body.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_load_d2_model_zoo_pkl_with_numpy(tmp_path):
    renamed = convert_torchvision_resnet_names(_torchvision_style_state())
    np_state = {k: v.numpy() for k, v in renamed.items()}
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": np_state, "__author__": "torchvision", "matching_heuristics": True}, f)
    model = _Detector()
    DetectionCheckpointer(model).load(str(path))
    assert np.array_equal(model.backbone.res2[0].conv2.weight.detach().numpy(),
                          np_state["res2.0.conv2.weight"])
    assert np.array_equal(model.backbone.stem.conv1.norm.running_mean.numpy(),
                          np_state["stem.conv1.norm.running_mean"])


def test_load_msra_c2_blobs_pkl(tmp_path):
    g = torch.Generator().manual_seed(1)
    blobs = {
        "conv1_w": torch.randn(4, 3, 3, 3, generator=g).numpy(),
        "res_conv1_bn_s": torch.rand(4, generator=g).numpy(),
        "res_conv1_bn_b": torch.rand(4, generator=g).numpy(),
        "res2_0_branch2a_w": torch.randn(4, 4, 1, 1, generator=g).numpy(),
        "res2_0_branch2a_bn_s": torch.rand(4, generator=g).numpy(),
        "res2_0_branch1_w": torch.randn(4, 4, 1, 1, generator=g).numpy(),
        "res2_0_branch1_bn_b": torch.rand(4, generator=g).numpy(),
        "res2_0_branch2a_w_momentum": np.zeros((4, 4, 1, 1), dtype=np.float32),
        "pred_w": np.zeros((3, 3), dtype=np.float32),  # unmatched: reported as unexpected
    }
    path = tmp_path / "R-50-msra.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    model = _Detector()
    DetectionCheckpointer(model).load(str(path))
    b = model.backbone
    assert np.array_equal(b.stem.conv1.weight.detach().numpy(), blobs["conv1_w"])
    assert np.array_equal(b.stem.conv1.norm.weight.detach().numpy(), blobs["res_conv1_bn_s"])
    assert np.array_equal(b.res2[0].conv1.weight.detach().numpy(), blobs["res2_0_branch2a_w"])
    assert np.array_equal(b.res2[0].conv1.norm.weight.detach().numpy(),
                          blobs["res2_0_branch2a_bn_s"])
    assert np.array_equal(b.res2[0].shortcut.weight.detach().numpy(), blobs["res2_0_branch1_w"])
    assert np.array_equal(b.res2[0].shortcut.norm.bias.detach().numpy(),
                          blobs["res2_0_branch1_bn_b"])


def test_matching_longest_suffix_shape_mismatch_and_ambiguity():
    model_sd = {"backbone.res2.0.conv1.weight": torch.zeros(2, 2),
                "backbone.res2.0.conv2.weight": torch.zeros(3),
                "head.conv1.weight": torch.zeros(5)}
    ckpt = {"res2.0.conv1.weight": torch.ones(2, 2), "0.conv1.weight": torch.full((2, 2), 2.0),
            "res2.0.conv2.weight": torch.ones(4)}
    out = align_and_update_state_dicts(model_sd, ckpt)
    assert torch.equal(out["backbone.res2.0.conv1.weight"], torch.ones(2, 2))  # longest wins
    assert "backbone.res2.0.conv2.weight" not in out  # shape mismatch skipped
    assert "res2.0.conv2.weight" in out  # kept as unexpected
    with pytest.raises(ValueError, match="multiple keys"):
        align_and_update_state_dicts(
            {"a.conv.weight": torch.zeros(1), "b.conv.weight": torch.zeros(1)},
            {"conv.weight": torch.ones(1)},
        )


def test_numpy_inside_pth_loads_with_weights_only(tmp_path, detrex_caplog):
    caplog = detrex_caplog
    model = nn.Linear(2, 2)
    path = tmp_path / "with_numpy.pth"
    torch.save({"model": model.state_dict(), "extra": np.arange(3), "scalar": np.float64(1.5),
                "iteration": 4}, path)
    # plain torch.load(weights_only=True) refuses this file
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    target = nn.Linear(2, 2)
    with caplog.at_level("WARNING"):
        extra = DetectionCheckpointer(target).load(str(path))
    assert "weights_only=False" not in caplog.text  # loaded on the safe path
    assert torch.equal(target.weight, model.weight)
    assert np.array_equal(extra["extra"], np.arange(3)) and extra["scalar"] == 1.5


def test_non_allowlisted_objects_fall_back_with_warning(tmp_path, detrex_caplog):
    caplog = detrex_caplog
    import argparse

    model = nn.Linear(2, 2)
    path = tmp_path / "with_namespace.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(a=1)}, path)
    target = nn.Linear(2, 2)
    with caplog.at_level("WARNING"):
        extra = DetectionCheckpointer(target).load(str(path))
    assert "weights_only=False" in caplog.text and "Namespace" in caplog.text
    assert torch.equal(target.weight, model.weight) and extra["args"].a == 1


def test_missing_files_give_clear_errors(tmp_path, monkeypatch):
    ck = DetectionCheckpointer(nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ck.load(str(tmp_path / "nope.pth"))
    monkeypatch.setenv("DETREX_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="DETREX_WEIGHTS"):
        ck.load("detectron2://ImageNetPretrained/torchvision/R-50.pkl")


def test_detectron2_name_resolves_via_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETREX_WEIGHTS", str(tmp_path))
    src = nn.Linear(2, 2)
    sub = tmp_path / "ImageNetPretrained" / "torchvision"
    sub.mkdir(parents=True)
    with open(sub / "R-50.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in src.state_dict().items()},
                     "__author__": "test", "matching_heuristics": True}, f)
    dst = nn.Module()
    dst.backbone = nn.Linear(2, 2)
    DetectionCheckpointer(dst).load("detectron2://ImageNetPretrained/torchvision/R-50.pkl")
    assert torch.equal(dst.backbone.weight, src.weight)
