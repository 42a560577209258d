import math

import torch

from detrex.layers import PositionEmbeddingLearned, PositionEmbeddingSine, get_sine_pos_embed


def test_sine_shape_and_values_unnormalized():
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    pe = PositionEmbeddingSine(num_pos_feats=4, temperature=10000)(mask)
    assert pe.shape == (1, 8, 3, 4)
    # channels 0..3 embed y, 4..7 embed x; position = 1-based index; dim_t = [1, 1, 100, 100]
    y, x = 2, 3  # row 1, column 2 (0-based)
    expected_y = [math.sin(y / 1), math.cos(y / 1), math.sin(y / 100), math.cos(y / 100)]
    expected_x = [math.sin(x / 1), math.cos(x / 1), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(pe[0, :, 1, 2], torch.tensor(expected_y + expected_x), atol=1e-6)


def test_sine_normalized_uses_valid_extent():
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[1, 2:, :] = True  # image 1 has two valid rows
    mask[1, :, 3:] = True  # and three valid columns
    pe = PositionEmbeddingSine(num_pos_feats=8, temperature=20, normalize=True)(mask)
    assert pe.shape == (2, 16, 4, 6)
    # the last valid row/column reach 2*pi (channel 0 is sin(y / 1), channel 8 is sin(x / 1))
    scale = 2 * math.pi
    assert torch.allclose(pe[0, 0, 3, 0], torch.tensor(math.sin(scale * 4 / (4 + 1e-6))), atol=1e-5)
    assert torch.allclose(pe[1, 0, 1, 0], torch.tensor(math.sin(scale * 2 / (2 + 1e-6))), atol=1e-5)
    assert torch.allclose(pe[1, 8, 0, 2], torch.tensor(math.sin(scale * 3 / (3 + 1e-6))), atol=1e-5)


def test_learned_embedding_shape_and_layout():
    m = PositionEmbeddingLearned(num_pos_feats=5, row_num_embed=10, col_num_embed=12)
    pe = m(torch.zeros(3, 4, 6, dtype=torch.bool))
    assert pe.shape == (3, 10, 4, 6)
    assert torch.equal(pe[0, :5, 2, 3], m.col_embed.weight[3])
    assert torch.equal(pe[0, 5:, 2, 3], m.row_embed.weight[2])


def test_get_sine_pos_embed_swaps_xy():
    boxes = torch.rand(7, 2, 4)
    emb = get_sine_pos_embed(boxes, num_pos_feats=16)
    assert emb.shape == (7, 2, 64)
    x_only = get_sine_pos_embed(boxes[..., :1], num_pos_feats=16, exchange_xy=False)
    y_only = get_sine_pos_embed(boxes[..., 1:2], num_pos_feats=16, exchange_xy=False)
    assert torch.allclose(emb[..., :16], y_only)
    assert torch.allclose(emb[..., 16:32], x_only)
    # first channel is sin(2*pi*x)
    assert torch.allclose(x_only[..., 0], torch.sin(2 * math.pi * boxes[..., 0]), atol=1e-5)
