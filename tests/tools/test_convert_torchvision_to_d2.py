"""tools/convert_torchvision_to_d2.py: torchvision ResNet .pth -> detectron2 .pkl."""

import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detrex.modeling import ResNet
from detrex.modeling.backbone import BasicStem

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "convert_torchvision_to_d2.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_torchvision_to_d2", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def d2_name(tv_name: str) -> str:
    """detectron2's documented renaming, spelled out for the names of a torchvision ResNet-18."""
    parts = tv_name.split(".")
    if parts[0] == "conv1":
        return "stem.conv1." + parts[1]
    if parts[0] == "bn1":
        return "stem.conv1.norm." + parts[1]
    stage = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}[parts[0]]
    block, module, rest = parts[1], parts[2], parts[3:]
    if module == "downsample":
        module = {"0": "shortcut", "1": "shortcut.norm"}[rest[0]]
        rest = rest[1:]
    elif module.startswith("bn"):
        module = f"conv{module[2:]}.norm"
    return ".".join([stage, block, module] + rest)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # distinct BN statistics so a swapped name would be noticed
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_converted_resnet18_loads_with_strict_names_and_equal_values(resnet18_file, tmp_path):
    src, tv_state = resnet18_file
    out = tmp_path / "R-18.pkl"
    assert load_tool().main([str(src), str(out)]) == 0
    with open(out, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    assert data["__author__"] == "torchvision" and data["matching_heuristics"] is True
    weights = data["model"]
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert not any(k.startswith("stem.fc") or k.endswith("num_batches_tracked") for k in weights)
    # a few names written out in full
    for tv, d2 in [
        ("conv1.weight", "stem.conv1.weight"),
        ("bn1.running_var", "stem.conv1.norm.running_var"),
        ("layer1.0.bn2.bias", "res2.0.conv2.norm.bias"),
        ("layer2.0.downsample.0.weight", "res3.0.shortcut.weight"),
        ("layer4.1.conv2.weight", "res5.1.conv2.weight"),
        ("layer3.0.downsample.1.running_mean", "res4.0.shortcut.norm.running_mean"),
    ]:
        assert d2_name(tv) == d2
        np.testing.assert_array_equal(weights[d2], tv_state[tv].numpy())

    model = ResNet(
        stem=BasicStem(3, 64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(18, norm="FrozenBN"),
        out_features=["res5"],
    )
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    expected = {d2_name(k): v for k, v in tv_state.items() if not k.startswith("fc.") and "num_batches" not in k}
    assert set(expected) == set(loaded)
    for k, v in expected.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)


def test_keep_fc_keeps_the_classifier_as_stem_fc(resnet18_file, tmp_path):
    src, tv_state = resnet18_file
    out = tmp_path / "R-18-fc.pkl"
    assert load_tool().main([str(src), str(out), "--keep-fc"]) == 0
    with open(out, "rb") as f:
        weights = pickle.load(f)["model"]
    np.testing.assert_array_equal(weights["stem.fc.weight"], tv_state["fc.weight"].numpy())


def test_bogus_and_non_resnet_files_give_clear_errors(tmp_path, capsys):
    tool = load_tool()
    text = tmp_path / "notes.pth"
    text.write_text("definitely not a checkpoint")
    assert tool.main([str(text), str(tmp_path / "a.pkl")]) == 1
    err = capsys.readouterr().err
    assert "notes.pth" in err and "cannot be read as a PyTorch checkpoint" in err

    vgg_like = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.0.weight": torch.zeros(4, 8)}, vgg_like)
    assert tool.main([str(vgg_like), str(tmp_path / "b.pkl")]) == 1
    err = capsys.readouterr().err
    assert "vgg.pth" in err and "not a torchvision ResNet state dict" in err and "features.0.weight" in err

    assert tool.main([str(tmp_path / "missing.pth"), str(tmp_path / "c.pkl")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("a.pkl", "b.pkl", "c.pkl"))

    with pytest.raises(tool.ConversionError, match="already has detectron2 names"):
        tool.convert_torchvision_resnet({"stem.conv1.weight": torch.zeros(1), "res2.0.conv1.weight": torch.zeros(1)})


@pytest.mark.slow
def test_command_line(resnet18_file, tmp_path):
    src, _ = resnet18_file
    out = tmp_path / "weights" / "R-18.pkl"
    proc = subprocess.run([sys.executable, str(TOOL), str(src), str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and out.is_file()
