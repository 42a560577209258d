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

#include <cstdint>

namespace detrex {
namespace msda {

// Backward kernel variants (the `variant` argument of ms_deform_attn_backward; names in
// detrex.layers.msda_op.BACKWARD_VARIANTS). 0 is the kernel every caller gets unless it asks for another.
namespace backward_variant {
constexpr int64_t kDefault = 0;
// profiling only: a stage left out, results wrong by design (bench/msda.py --variants)
constexpr int64_t kNoScatter = 1;       // grad_value not scattered (stays zero)
constexpr int64_t kNoPointGrads = 2;    // no value gathers / dot products: location and weight grads are zero
constexpr int64_t kSkeleton = 3;        // 1 and 2 together: point loads, corner math and the writes only
constexpr int64_t kNoZeroFill = 4;      // accumulation buffer not zero-filled (grad_value is garbage)
constexpr int64_t kNoConvert = 5;       // float32 buffer not converted to value's dtype (grad_value uninitialised)
// candidates: correct results
constexpr int64_t kVec4 = 10;           // float16/bfloat16: 4 channels per lane (the default has 8)
constexpr int64_t kNative = 11;         // float16/bfloat16: grad_value accumulated in value's dtype (half2 atomics)
constexpr int64_t kNativeVec4 = 12;     // 10 and 11 together
constexpr int64_t kPointParallel = 13;  // one warp per (batch, query, head), several points at once
constexpr int64_t kAuto = 14;           // 10 for half types, plus 13 when the default grid would not fill the GPU
}  // namespace backward_variant

inline bool is_backward_variant(int64_t v) { return (v >= 0 && v <= 5) || (v >= 10 && v <= 14); }

// Writes output (B, Q, M * D) (value's dtype, contiguous).
void forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights, at::Tensor& output);

// grad_output (B, Q, M * D) contiguous, value's dtype. Returns grad_value (value's dtype); grad_value is accumulated
// in a zero-filled float32 buffer (float64 for float64; value's dtype for the native variants) and converted once.
// grad_sampling_locations / grad_attention_weights: contiguous, sampling_locations' dtype, fully overwritten.
at::Tensor backward_cuda(const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                         const at::Tensor& attention_weights, at::Tensor& grad_sampling_locations,
                         at::Tensor& grad_attention_weights, int64_t variant);

}  // namespace msda
}  // namespace detrex
