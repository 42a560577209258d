"""Multi-scale deformable attention: the pure-PyTorch core, the dispatch point, and the attention layer.

The core op is checked against a direct per-point bilinear reference written here from the definition
(align_corners=False: pixel (i, j) of an H x W map has its centre at normalized ((j + 0.5) / W, (i + 0.5) / H);
corners outside the map contribute zero), and by gradcheck in float64.
"""
import logging
import math
import sys

import pytest
import torch
from torch import nn

from detrex.layers import msda_dispatch
from detrex.layers.multi_scale_deform_attn import (
    MultiScaleDeformableAttention,
    ms_deform_attn,
    multi_scale_deformable_attn_pytorch,
)

torch.set_num_threads(1)

SHAPES = [(3, 4), (2, 2)]  # two levels, H x W
B, M, D, Q, P = 1, 2, 4, 3, 2
L = len(SHAPES)
S = sum(h * w for h, w in SHAPES)


# --------------------------------------------------------------------------------------------- reference
def reference_msda(value, shapes, loc, weights):
    """Per-point bilinear sampling with explicit corner loops; differentiable in all three inputs."""
    b_, s_, m_, d_ = value.shape
    _, q_, _, l_, p_, _ = loc.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    rows = []
    for b in range(b_):
        for q in range(q_):
            heads = []
            for m in range(m_):
                acc = value.new_zeros(d_)
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(p_):
                        x = loc[b, q, m, lvl, p, 0] * w - 0.5  # pixel coordinates, centres at integers
                        y = loc[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        fx, fy = x - x0, y - y0
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    v = value[b, starts[lvl] + yy * w + xx, m]
                                    acc = acc + weights[b, q, m, lvl, p] * wy * wx * v
                heads.append(acc)
            rows.append(torch.cat(heads))
    return torch.stack(rows).view(b_, q_, m_ * d_)


def make_inputs(dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # mostly inside the maps, some slightly outside to exercise zero padding
    loc = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15
    weights = torch.rand(B, Q, M, L, P, generator=g, dtype=torch.float64)
    out = [t.to(dtype).requires_grad_(requires_grad) for t in (value, loc, weights)]
    return out


def spatial_shapes():
    return torch.tensor(SHAPES, dtype=torch.long)


# --------------------------------------------------------------------------------------------- core op
def test_hand_computed_samples():
    # one level 2x2, one head, D=1, values 1..4 row-major
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    locs = torch.tensor([
        [0.25, 0.25],  # centre of pixel (0, 0) -> 1
        [0.75, 0.25],  # centre of pixel (0, 1) -> 2
        [0.5, 0.5],  # middle of all four -> 2.5
        [0.0, 0.25],  # left border of pixel (0, 0): half of it, half of zero padding -> 0.5
        [0.5, 1.25],  # fully below the map -> 0
    ], dtype=torch.float64)
    n = locs.shape[0]
    loc = locs.view(1, n, 1, 1, 1, 2)
    weights = torch.ones(1, n, 1, 1, 1, dtype=torch.float64)
    out = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    assert out.shape == (1, n, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 2.0, 2.5, 0.5, 0.0], dtype=torch.float64))


def test_matches_per_point_reference():
    value, loc, weights = make_inputs(seed=1)
    out = multi_scale_deformable_attn_pytorch(value, spatial_shapes(), loc, weights)
    ref = reference_msda(value, SHAPES, loc, weights)
    assert out.shape == (B, Q, M * D)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_gradients_match_reference():
    value, loc, weights = make_inputs(seed=2, requires_grad=True)
    g = torch.randn(B, Q, M * D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((multi_scale_deformable_attn_pytorch(value, spatial_shapes(), loc, weights) * g).sum(),
                                (value, loc, weights))
    ref_grads = torch.autograd.grad((reference_msda(value, SHAPES, loc, weights) * g).sum(), (value, loc, weights))
    for name, a, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_gradcheck_float64():
    value, loc, weights = make_inputs(seed=4, requires_grad=True)
    shapes = spatial_shapes()
    assert torch.autograd.gradcheck(
        lambda v, sl, aw: multi_scale_deformable_attn_pytorch(v, shapes, sl, aw),
        (value, loc, weights), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_value_gradient_is_one_concatenation_not_a_scatter_per_level():
    """Eager runs split the value into levels once: the backward joins the levels' gradients with one ``cat``.
    Slicing level by level (as the traced export path must) would add a zero-fill and copy per level to every
    deformable layer's backward, i.e. kernel launches on a GPU."""
    from detrex.utils.op_count import OpCounter

    value, loc, weights = make_inputs(seed=5)
    value.requires_grad_(True)  # the value's gradient only: slicing loc / weights per level is not at stake here
    out = multi_scale_deformable_attn_pytorch(value, spatial_shapes(), loc, weights)
    with OpCounter() as counter:
        out.sum().backward()
    ops = {name: n for (_, name), n in counter.by_op.items()}
    assert ops.get("slice_backward", 0) == 0 and ops.get("cat", 0) == 1, ops
    assert value.grad is not None and value.grad.shape == value.shape


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_close_to_float32(dtype, atol):
    """Documented tolerance: max abs error vs float32 on the same (rounded) inputs, outputs |y| <= ~2:
    float16 <= 5e-3, bfloat16 <= 3e-2 (measured worst over 20 seeds: 2.1e-3 and 1.3e-2; bfloat16 keeps an
    8-bit mantissa, so products and the sampling grid round at ~4e-3 relative)."""
    value, loc, weights = make_inputs(dtype=dtype, seed=5, requires_grad=True)
    out = multi_scale_deformable_attn_pytorch(value, spatial_shapes(), loc, weights)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == dtype and torch.isfinite(t.grad).all()
               for t in (value, loc, weights))
    ref = multi_scale_deformable_attn_pytorch(value.detach().float(), spatial_shapes(), loc.detach().float(),
                                              weights.detach().float())
    err = (out.float() - ref).abs().max().item()
    assert err <= atol, f"{dtype}: max abs error {err} > {atol}"


def test_mixed_dtypes_promote():
    value, loc, weights = make_inputs(dtype=torch.float32, seed=6)
    out = multi_scale_deformable_attn_pytorch(value.bfloat16(), spatial_shapes(), loc, weights)
    assert out.dtype == torch.float32  # float32 locations are not rounded to bfloat16
    ref = multi_scale_deformable_attn_pytorch(value.bfloat16().float(), spatial_shapes(), loc, weights)
    torch.testing.assert_close(out, ref)


def test_spatial_shapes_as_list():
    value, loc, weights = make_inputs(seed=7)
    torch.testing.assert_close(multi_scale_deformable_attn_pytorch(value, SHAPES, loc, weights),
                               multi_scale_deformable_attn_pytorch(value, spatial_shapes(), loc, weights))


@pytest.mark.parametrize("bad,match", [
    ("value_rank", r"value must be \(B, S, M, D\)"),
    ("tokens", r"S=17 tokens but spatial_shapes \[\(3, 4\), \(2, 2\)\] sum to 16"),
    ("loc_levels", r"sampling_locations must be \(B=1, Q, M=2, L=2, P, 2\)"),
    ("weights", r"attention_weights must be \(B, Q, M, L, P\)"),
    ("shapes", r"spatial_shapes must be \(L, 2\)"),
])
def test_shape_errors_name_the_argument(bad, match):
    value, loc, weights = make_inputs(seed=8)
    shapes = spatial_shapes()
    if bad == "value_rank":
        value = value.flatten(2)
    elif bad == "tokens":
        value = torch.cat([value, value[:, :1]], dim=1)
    elif bad == "loc_levels":
        loc = loc[:, :, :, :1]
    elif bad == "weights":
        weights = weights[..., :1]
    elif bad == "shapes":
        shapes = shapes.flatten()
    with pytest.raises(ValueError, match=match):
        multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)


# --------------------------------------------------------------------------------------------- dispatch
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def dispatch_state(monkeypatch):
    """Clean dispatch state and a handler recording the dispatch log (independent of logger propagation)."""
    monkeypatch.delenv(msda_dispatch.ENV_VAR, raising=False)
    msda_dispatch.register_compiled_op(None)
    records = _Records()
    msda_dispatch.logger.addHandler(records)
    old_level = msda_dispatch.logger.level
    msda_dispatch.logger.setLevel(logging.INFO)
    yield records
    msda_dispatch.logger.removeHandler(records)
    msda_dispatch.logger.setLevel(old_level)
    msda_dispatch.register_compiled_op(None)


class FakeOp:
    def __init__(self):
        self.calls = []

    def __call__(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        self.calls.append((spatial_shapes, level_start_index, im2col_step))
        b, _, m, d = value.shape
        return torch.full((b, sampling_locations.shape[1], m * d), 7.0, dtype=value.dtype)


def test_dispatch_uses_pytorch_on_cpu_even_with_an_op(dispatch_state):
    fake = FakeOp()
    msda_dispatch.register_compiled_op(fake)  # serves "cuda" only (the default)
    value, loc, weights = make_inputs(seed=9)
    out = ms_deform_attn(value, spatial_shapes(), None, loc, weights)
    out2 = ms_deform_attn(value, spatial_shapes(), None, loc, weights)
    assert fake.calls == []
    torch.testing.assert_close(out, reference_msda(value, SHAPES, loc, weights))
    torch.testing.assert_close(out2, out)
    assert len(dispatch_state.messages) == 1 and "pure-PyTorch path on cpu" in dispatch_state.messages[0]


def test_dispatch_picks_registered_op_for_its_device(dispatch_state, monkeypatch):
    # simulate a CUDA machine: the op serves the device the test tensors live on
    monkeypatch.setattr(msda_dispatch, "COMPILED_OP_DEVICE_TYPES", ("cpu",))
    fake = FakeOp()
    msda_dispatch.register_compiled_op(fake)
    value, loc, weights = make_inputs(seed=10)
    out = ms_deform_attn(value, SHAPES, None, loc, weights, im2col_step=32)
    ms_deform_attn(value, SHAPES, None, loc, weights, im2col_step=32)
    assert torch.equal(out, torch.full((B, Q, M * D), 7.0, dtype=torch.float64))
    shapes_arg, starts_arg, step = fake.calls[0]
    assert torch.equal(shapes_arg, torch.tensor([[3, 4], [2, 2]]))
    assert torch.equal(starts_arg, torch.tensor([0, 12]))  # computed when not given
    assert step == 32
    assert len(dispatch_state.messages) == 1 and "compiled op" in dispatch_state.messages[0]


def test_dispatch_env_forces_pytorch(dispatch_state, monkeypatch):
    monkeypatch.setattr(msda_dispatch, "COMPILED_OP_DEVICE_TYPES", ("cpu",))
    fake = FakeOp()
    msda_dispatch.register_compiled_op(fake)
    monkeypatch.setenv(msda_dispatch.ENV_VAR, "pytorch")
    value, loc, weights = make_inputs(seed=11)
    out = ms_deform_attn(value, spatial_shapes(), None, loc, weights)
    assert fake.calls == []
    torch.testing.assert_close(out, reference_msda(value, SHAPES, loc, weights))
    monkeypatch.setenv(msda_dispatch.ENV_VAR, "cuda-please")
    with pytest.raises(ValueError, match=msda_dispatch.ENV_VAR):
        ms_deform_attn(value, spatial_shapes(), None, loc, weights)


def test_dispatch_finds_torch_library_op(dispatch_state, monkeypatch):
    """The lazy lookup finds an op registered with torch.library under the configured namespace/name."""
    ns, name = "detrex_msda_dispatch_test", "fake_msda"
    if not hasattr(getattr(torch.ops, ns), name):
        @torch.library.custom_op(f"{ns}::{name}", mutates_args=())
        def _fake(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                  sampling_locations: torch.Tensor, attention_weights: torch.Tensor, im2col_step: int) -> torch.Tensor:
            out = multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
            return out * 2
    monkeypatch.setattr(msda_dispatch, "OP_NAMESPACE", ns)
    monkeypatch.setattr(msda_dispatch, "OP_NAME", name)
    monkeypatch.setattr(msda_dispatch, "PROBE_MODULES", ())
    monkeypatch.setattr(msda_dispatch, "COMPILED_OP_DEVICE_TYPES", ("cpu",))
    msda_dispatch.reset_compiled_op_cache()
    value, loc, weights = make_inputs(seed=12)
    out = ms_deform_attn(value, spatial_shapes(), torch.tensor([0, 12]), loc, weights)
    torch.testing.assert_close(out, 2 * reference_msda(value, SHAPES, loc, weights))
    assert "compiled op" in msda_dispatch.msda_backend_info()


def test_dispatch_survives_broken_extension(dispatch_state, monkeypatch, tmp_path):
    """A probe module that fails to load (here: raises OSError like a bad .so) falls back, logged once."""
    (tmp_path / "detrex_msda_broken_ext.py").write_text("raise OSError('undefined symbol: _ZN2at6detail')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "detrex_msda_broken_ext", raising=False)
    monkeypatch.setattr(msda_dispatch, "PROBE_MODULES", ("detrex_msda_broken_ext", "detrex_msda_not_installed"))
    monkeypatch.setattr(msda_dispatch, "OP_NAME", "op_that_is_not_registered")
    monkeypatch.setattr(msda_dispatch, "COMPILED_OP_DEVICE_TYPES", ("cpu",))
    msda_dispatch.reset_compiled_op_cache()
    value, loc, weights = make_inputs(seed=13)
    for _ in range(2):
        out = ms_deform_attn(value, spatial_shapes(), None, loc, weights)
        torch.testing.assert_close(out, reference_msda(value, SHAPES, loc, weights))
    assert len(dispatch_state.messages) == 1
    msg = dispatch_state.messages[0]
    assert "pure-PyTorch" in msg and "undefined symbol" in msg and "not registered" in msg
    assert "detrex_msda_not_installed" not in msg  # an absent optional module is not an error
    assert "no compiled op" in msda_dispatch.msda_backend_info()


# --------------------------------------------------------------------------------------------- module
C, LV, PT, HEADS = 16, 2, 2, 4
MSHAPES = [(4, 5), (2, 3)]
MS = sum(h * w for h, w in MSHAPES)


def make_module(**kw):
    torch.manual_seed(0)
    kw = dict(embed_dim=C, num_heads=HEADS, num_levels=LV, num_points=PT, dropout=0.0, **kw)
    return MultiScaleDeformableAttention(**kw).double().eval()


def module_inputs(bs=2, nq=5, box=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(bs, nq, C, generator=g, dtype=torch.float64)
    value = torch.randn(bs, MS, C, generator=g, dtype=torch.float64)
    ref = torch.rand(bs, nq, LV, 4 if box else 2, generator=g, dtype=torch.float64)
    if box:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return query, value, ref


def test_init_matches_deformable_detr():
    m = make_module()
    assert m.sampling_offsets.weight.abs().sum() == 0
    assert m.attention_weights.weight.abs().sum() == 0 and m.attention_weights.bias.abs().sum() == 0
    assert m.value_proj.bias.abs().sum() == 0 and m.output_proj.bias.abs().sum() == 0
    bound = math.sqrt(6.0 / (C + C))  # xavier-uniform bound
    assert 0 < m.value_proj.weight.abs().max() <= bound and 0 < m.output_proj.weight.abs().max() <= bound
    bias = m.sampling_offsets.bias.view(HEADS, LV, PT, 2)
    # 4 heads at 0, 90, 180, 270 degrees, scaled so the larger component is 1; point p at distance p + 1
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    for p in range(PT):
        for lvl in range(LV):
            torch.testing.assert_close(bias[:, lvl, p], directions * (p + 1), atol=1e-6, rtol=0)
    # detrex's parameter names and shapes
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (HEADS * LV * PT * 2, C), "sampling_offsets.bias": (HEADS * LV * PT * 2,),
        "attention_weights.weight": (HEADS * LV * PT, C), "attention_weights.bias": (HEADS * LV * PT,),
        "value_proj.weight": (C, C), "value_proj.bias": (C,),
        "output_proj.weight": (C, C), "output_proj.bias": (C,),
    }


def test_sampling_locations_2d_and_4d_at_init():
    m = make_module()
    query, _, ref2 = module_inputs(seed=1)
    loc = m.compute_sampling_locations(query, ref2, torch.tensor(MSHAPES))
    assert loc.shape == (2, 5, HEADS, LV, PT, 2)
    for lvl, (h, w) in enumerate(MSHAPES):
        for p in range(PT):
            # head 0 points along +x: (p + 1) pixels of this level
            torch.testing.assert_close(loc[:, :, 0, lvl, p, 0], ref2[:, :, lvl, 0] + (p + 1) / w)
            torch.testing.assert_close(loc[:, :, 0, lvl, p, 1], ref2[:, :, lvl, 1])
            # head 1 points along +y
            torch.testing.assert_close(loc[:, :, 1, lvl, p, 1], ref2[:, :, lvl, 1] + (p + 1) / h)
    _, _, ref4 = module_inputs(box=True, seed=2)
    loc4 = m.compute_sampling_locations(query, ref4, torch.tensor(MSHAPES))
    for p in range(PT):
        # box (cx, cy, w, h): offset / P * w * 0.5
        torch.testing.assert_close(loc4[:, :, 0, :, p, 0], ref4[..., 0] + (p + 1) / PT * ref4[..., 2] * 0.5)
        torch.testing.assert_close(loc4[:, :, 2, :, p, 0], ref4[..., 0] - (p + 1) / PT * ref4[..., 2] * 0.5)
        torch.testing.assert_close(loc4[:, :, 0, :, p, 1], ref4[..., 1])


def test_attention_weights_softmax_over_levels_and_points():
    m = make_module()
    query, _, _ = module_inputs(seed=3)
    w = m.compute_attention_weights(query)
    assert w.shape == (2, 5, HEADS, LV, PT)
    torch.testing.assert_close(w, torch.full_like(w, 1.0 / (LV * PT)))  # zero init -> uniform
    nn.init.normal_(m.attention_weights.weight)
    w = m.compute_attention_weights(query)
    torch.testing.assert_close(w.sum((-1, -2)), torch.ones(2, 5, HEADS, dtype=torch.float64))
    assert (w.flatten(-2).std(-1) > 0).all()


@pytest.mark.parametrize("box", [False, True])
def test_forward_matches_manual_composition(box):
    m = make_module(batch_first=True)
    nn.init.normal_(m.sampling_offsets.weight, std=0.1)
    nn.init.normal_(m.attention_weights.weight)
    query, value, ref = module_inputs(box=box, seed=4)
    pos = torch.randn_like(query)
    out = m(query, value=value, query_pos=pos, reference_points=ref, spatial_shapes=torch.tensor(MSHAPES),
            level_start_index=torch.tensor([0, 20]))
    assert out.shape == query.shape
    # independent composition: projections by hand, locations by the documented formula, reference sampler
    q = query + pos
    offsets = (q @ m.sampling_offsets.weight.T + m.sampling_offsets.bias).view(2, 5, HEADS, LV, PT, 2)
    logits = (q @ m.attention_weights.weight.T + m.attention_weights.bias).view(2, 5, HEADS, LV * PT)
    weights = logits.softmax(-1).view(2, 5, HEADS, LV, PT)
    if box:
        loc = ref[:, :, None, :, None, :2] + offsets / PT * ref[:, :, None, :, None, 2:] * 0.5
    else:
        wh = torch.tensor([[w, h] for h, w in MSHAPES], dtype=torch.float64)
        loc = ref[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    v = (value @ m.value_proj.weight.T + m.value_proj.bias).view(2, MS, HEADS, C // HEADS)
    sampled = reference_msda(v, MSHAPES, loc, weights)
    expected = query + sampled @ m.output_proj.weight.T + m.output_proj.bias
    torch.testing.assert_close(out, expected)


def test_forward_seq_first_and_defaults():
    m = make_module(batch_first=False)
    query, value, ref = module_inputs(seed=5)
    out = m(query.transpose(0, 1), value=value.transpose(0, 1), reference_points=ref,
            spatial_shapes=torch.tensor(MSHAPES))
    assert out.shape == (5, 2, C)
    mb = make_module(batch_first=True)
    mb.load_state_dict(m.state_dict())
    torch.testing.assert_close(out.transpose(0, 1), mb(query, value=value, reference_points=ref,
                                                      spatial_shapes=torch.tensor(MSHAPES)))
    # value defaults to query (encoder self-attention): S must then equal the token count
    tokens = torch.randn(2, MS, C, dtype=torch.float64)
    ref_tokens = torch.rand(2, MS, LV, 2, dtype=torch.float64)
    assert mb(tokens, reference_points=ref_tokens, spatial_shapes=torch.tensor(MSHAPES)).shape == (2, MS, C)


def test_padding_mask_removes_padded_values():
    m = make_module(batch_first=True)
    nn.init.normal_(m.sampling_offsets.weight, std=0.5)
    query, value, ref = module_inputs(seed=6)
    mask = torch.zeros(2, MS, dtype=torch.bool)
    # image 1: the right column of level 0 (4x5) and the right column of level 1 (2x3) are padding
    lvl0 = torch.zeros(4, 5, dtype=torch.bool)
    lvl0[:, -1] = True
    lvl1 = torch.zeros(2, 3, dtype=torch.bool)
    lvl1[:, -1] = True
    mask[1] = torch.cat([lvl0.flatten(), lvl1.flatten()])
    shapes = torch.tensor(MSHAPES)
    out = m(query, value=value, key_padding_mask=mask, reference_points=ref, spatial_shapes=shapes)
    changed = value.clone()
    changed[mask] = 1000.0
    out_changed = m(query, value=changed, key_padding_mask=mask, reference_points=ref, spatial_shapes=shapes)
    torch.testing.assert_close(out, out_changed)
    # without the mask the same change is visible (the test can fail)
    out_unmasked = m(query, value=changed, reference_points=ref, spatial_shapes=shapes)
    assert not torch.allclose(out_unmasked[1], out[1])


def test_ks_style_reuse_of_steps():
    """A KS layer reuses locations with a second weight set and a second value projection."""
    m = make_module(batch_first=True)
    teacher_weights = nn.Linear(C, HEADS * LV * PT).double()
    teacher_value = nn.Linear(C, C).double()
    query, value, ref = module_inputs(seed=7)
    shapes = torch.tensor(MSHAPES)
    loc = m.compute_sampling_locations(query, ref, shapes)
    a_t = m.compute_attention_weights(query, proj=teacher_weights)
    expected_a_t = teacher_weights(query).view(2, 5, HEADS, LV * PT).softmax(-1).view(2, 5, HEADS, LV, PT)
    torch.testing.assert_close(a_t, expected_a_t)
    v_t = m.project_value(value, proj=teacher_value)
    torch.testing.assert_close(v_t, teacher_value(value).view(2, MS, HEADS, C // HEADS))
    out = m.attend(v_t, shapes, None, loc, a_t)
    expected = m.output_proj(reference_msda(v_t, MSHAPES, loc, a_t))
    torch.testing.assert_close(out, expected)


def test_module_backward_and_bfloat16():
    m = make_module(batch_first=True).float().train()
    query, value, ref = (t.float() for t in module_inputs(seed=8))
    out = m(query, value=value, reference_points=ref, spatial_shapes=torch.tensor(MSHAPES))
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.value_proj.weight.grad.abs().sum() > 0 and m.sampling_offsets.weight.grad.abs().sum() > 0
    mb = make_module(batch_first=True).to(torch.bfloat16)
    outb = mb(query.bfloat16(), value=value.bfloat16(), reference_points=ref, spatial_shapes=torch.tensor(MSHAPES))
    assert outb.dtype == torch.bfloat16 and torch.isfinite(outb).all()


@pytest.mark.parametrize("bad,match", [
    ("ref_shape", r"reference_points must be \(B, Q, L, 2\) points or \(B, Q, L, 4\) boxes"),
    ("ref_missing", r"reference_points must be"),
    ("mask", r"key_padding_mask must be \(B, S\)"),
    ("query_dim", r"query must be \(B, N, C\) with C=16"),
    ("heads", r"embed_dim \(16\) must be divisible by num_heads \(3\)"),
])
def test_module_errors_name_the_argument(bad, match):
    m = make_module(batch_first=True)
    query, value, ref = module_inputs(seed=9)
    kwargs = dict(value=value, reference_points=ref, spatial_shapes=torch.tensor(MSHAPES))
    with pytest.raises(ValueError, match=match):
        if bad == "ref_shape":
            kwargs["reference_points"] = ref[:, :, :1]
        elif bad == "ref_missing":
            kwargs["reference_points"] = None
        elif bad == "mask":
            kwargs["key_padding_mask"] = torch.zeros(2, MS - 1, dtype=torch.bool)
        elif bad == "query_dim":
            query = query[..., :8]
        elif bad == "heads":
            MultiScaleDeformableAttention(embed_dim=16, num_heads=3)
        m(query, **kwargs)
