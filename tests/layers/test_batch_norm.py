import pytest
import torch
import torch.nn as nn

from detrex.layers import Conv2d, FrozenBatchNorm2d, get_norm


def test_frozen_bn_matches_eval_batchnorm_and_has_no_parameters():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert list(frozen.parameters()) == []
    assert frozen.eps == 1e-5
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)
    # the explicit path used when gradients flow gives the same values
    assert torch.allclose(frozen(x.clone().requires_grad_()), bn(x), atol=1e-6)
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_frozen_bn_ignores_num_batches_tracked_and_starts_as_identity():
    frozen = FrozenBatchNorm2d(3)
    x = torch.randn(1, 3, 2, 2)
    assert torch.allclose(frozen(x), x, atol=1e-6)
    sd = nn.BatchNorm2d(3).state_dict()
    assert "num_batches_tracked" in sd
    frozen.load_state_dict(sd, strict=True)


def test_get_norm_and_conv_wrapper():
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    assert isinstance(get_norm("GN", 64), nn.GroupNorm)
    assert get_norm("", 8) is None
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("nope", 8)
    conv = Conv2d(3, 8, 3, padding=1, bias=False, norm=get_norm("FrozenBN", 8), activation=torch.relu)
    assert set(conv.state_dict()) == {"weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"}
    assert (conv(torch.randn(1, 3, 5, 5)) >= 0).all()


def _random_frozen_bn(c):
    bn = FrozenBatchNorm2d(c)
    g = torch.Generator().manual_seed(0)
    bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(c, generator=g))
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    return bn


def test_conv_folds_frozen_bn_in_eval_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 11)
    for bias in (False, True):
        conv = Conv2d(4, 6, 3, stride=2, padding=1, bias=bias, norm=_random_frozen_bn(6), activation=torch.relu)
        # reference: the two steps written out with plain torch ops (conv, then the BatchNorm formula)
        y = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, 1)
        bn = conv.norm
        ref = torch.relu((y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
                         * bn.weight[:, None, None] + bn.bias[:, None, None])
        conv.eval()
        with torch.no_grad():
            folded = conv(x)
        torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-5)
        conv.train()
        torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
        # folding is on the fly: parameters and buffers (the state dict) are untouched
        assert set(conv.state_dict()) == {"weight", "norm.weight", "norm.bias", "norm.running_mean",
                                          "norm.running_var"} | ({"bias"} if bias else set())


def test_training_affine_follows_buffer_changes_and_dtype():
    """The (scale, shift) kept between training steps is rebuilt when a buffer changes in place (checkpoint load,
    EMA swap) or is replaced (device move), and per input dtype."""
    bn = FrozenBatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)

    def expected(inp):
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        return inp * scale.view(1, -1, 1, 1).to(inp.dtype) + shift.view(1, -1, 1, 1).to(inp.dtype)

    assert torch.equal(bn(x), expected(x))
    bn.load_state_dict({"weight": torch.full((4,), 2.0), "bias": torch.ones(4), "running_mean": torch.ones(4),
                        "running_var": torch.full((4,), 4.0)})
    assert torch.equal(bn(x), expected(x))
    bn.running_mean.add_(1.0)
    assert torch.equal(bn(x), expected(x))
    bn.running_var = torch.full((4,), 9.0)  # replaced, as .to(device) does
    assert torch.equal(bn(x), expected(x))
    xb = x.detach().bfloat16().requires_grad_()
    assert bn(xb).dtype == torch.bfloat16 and torch.allclose(bn(xb).float(), expected(xb).float())
