// Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021): CUDA launchers.
//
// The launchers take tensors that msda_op.cpp has already validated and normalised:
//   value               (B, S, M, D)        contiguous, float64 / float32 / float16 / bfloat16
//   spatial_shapes      (L, 2)   int64      (H_l, W_l), on value's device
//   level_start_index   (L,)     int64      on value's device
//   sampling_locations  (B, Q, M, L, P, 2)  contiguous, normalised (x, y), align_corners=False
//   attention_weights   (B, Q, M, L, P)     contiguous, same dtype as sampling_locations
// sampling_locations / attention_weights have value's dtype, or float32 when value is float16 / bfloat16.
#pragma once

#include <ATen/core/Tensor.h>

namespace detrex {
namespace msda {

// Writes output (B, Q, M * D) (value's dtype, contiguous).
void forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights, at::Tensor& output);

// grad_output (B, Q, M * D) contiguous, value's dtype.
// grad_value_acc: zero-filled (B, S, M, D) accumulation buffer, float32 (float64 when value is float64);
// grad_sampling_locations / grad_attention_weights: contiguous, sampling_locations' dtype, fully overwritten.
void backward_cuda(const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, at::Tensor& grad_value_acc,
                   at::Tensor& grad_sampling_locations, at::Tensor& grad_attention_weights);

}  // namespace msda
}  // namespace detrex
