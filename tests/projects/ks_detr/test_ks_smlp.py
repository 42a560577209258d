"""sMLP leaves background and padded tokens unchanged (ks_detr_method.md §3, §11.2)."""
import torch

from projects.ks_detr.modeling.smlp import KSGT, sMLP


def test_smlp_masks_background_and_padding():
    torch.manual_seed(0)
    N, B, C = 6, 2, 8
    smlp = sMLP(C)
    x = torch.randn(N, B, C)
    fg = torch.zeros(N, B)
    fg[1:4, 0] = 1
    fg[2:6, 1] = 1
    pad = torch.zeros(B, N, dtype=torch.bool)
    pad[1, 4:] = True  # tokens 4, 5 of image 1 are padding (and marked fg): must pass unchanged
    out = smlp(x, fg, pad)
    changed = torch.zeros(N, B, dtype=torch.bool)
    changed[1:4, 0] = True
    changed[2:4, 1] = True
    assert torch.equal(out[~changed], x[~changed])
    lin = smlp.token_split_conv.linear[0]
    expected = torch.relu(x @ lin.weight.T + lin.bias)
    assert torch.allclose(out[changed], expected[changed], atol=1e-6)
    assert not torch.allclose(out[changed], x[changed])


def test_ksgt_key_names_and_only_smlp_parameters():
    ksgt = KSGT(16)
    assert sorted(k for k, _ in ksgt.named_parameters()) == [
        "smlp_module.token_split_conv.linear.0.bias", "smlp_module.token_split_conv.linear.0.weight"]
    m = ksgt.token_mask([torch.tensor([[10.0, 20.0, 200.0, 300.0]])], (320, 480), (10, 15))
    assert int(m.sum()) == 40
