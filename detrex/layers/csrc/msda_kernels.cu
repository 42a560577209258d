// Multi-scale deformable attention: forward and backward CUDA kernels.
//
// Design (compare the original Deformable-DETR "im2col" op, which runs one thread per output channel and re-reads
// every sampling location and weight D times):
//   * one group of G lanes (G a power of two <= 32, a slice of a warp) per (batch, query, head); each lane owns VEC
//     consecutive channels, so one bilinear corner of one head is one contiguous, vectorised read of D channels
//     (value layout (B, S, M, D), D contiguous: 128 bytes for D = 32 float32);
//   * the group's L * P locations and weights (contiguous in memory) are loaded once, cooperatively, one point per
//     lane, and broadcast with warp shuffles;
//   * groups are ordered (batch, head, query) with the query fastest, so neighbouring groups of a block sample
//     nearby pixels of the same head (encoder queries are raster-ordered tokens) and share corner lines in L1;
//   * backward: grad_value is scattered with atomics into a float32 (float64) buffer, vectorised float4 atomics on
//     sm_90+; grads of locations and weights are partial sums over each lane's channels reduced with shuffles, then
//     written once per point, coalesced, without atomics;
//   * accumulation in float32 for float16 / bfloat16 (opmath), locations and weights read as float32 or as value's
//     dtype.
// Bilinear sampling follows grid_sample(align_corners=False, padding_mode="zeros"): pixel (i, j) of a level is
// centred at ((j + 0.5) / W, (i + 0.5) / H); corners outside the map read zero.
//
// Backward variants (msda.h, detrex.layers.msda_op.BACKWARD_VARIANTS; default 0 = the kernel described above). They
// exist to profile the backward on a GPU (issue 16) and are selected per call; nothing changes unless one is chosen:
//   * profiling only, wrong results by design: leave one stage out (the grad_value scatter, the value gathers and
//     location/weight gradients, both, the zero fill of the accumulation buffer, its conversion pass);
//   * candidates, correct (tests/layers/test_msda_cuda.py checks each against the PyTorch op): 4 channels per lane
//     for float16/bfloat16 (twice the lanes of the default's 4 for D = 32, one float4 atomic per corner and lane);
//     grad_value accumulated in value's dtype with packed half2 / bfloat162 atomics (sm_90: one vector red.global
//     per 16 or 8 bytes; no float32 buffer, no conversion pass; rounded at every addition, see the contention test);
//     one warp per (batch, query, head) whose lanes work on several sampling points at once (more threads when there
//     are few queries, as in the decoder); and "auto": 4 channels per lane for half types, and the point-parallel
//     grid when the default grid would not fill the GPU.
#include "msda.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace detrex {
namespace msda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* __restrict__ p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

// Level table in shared memory: H, W, start per level. A level that does not fit in S tokens (inconsistent
// spatial_shapes / level_start_index, which cannot be checked on the host without a sync) gets H = W = 0 and
// contributes zeros instead of reading out of bounds.
__device__ __forceinline__ void load_levels(int* s_level, const int64_t* __restrict__ spatial_shapes,
                                            const int64_t* __restrict__ level_start, int L, int S) {
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    const int64_t h = spatial_shapes[2 * i], w = spatial_shapes[2 * i + 1], st = level_start[i];
    const bool ok = h > 0 && w > 0 && st >= 0 && st + h * w <= S;
    s_level[3 * i] = ok ? static_cast<int>(h) : 0;
    s_level[3 * i + 1] = ok ? static_cast<int>(w) : 0;
    s_level[3 * i + 2] = ok ? static_cast<int>(st) : 0;
  }
}

// Bilinear corners of one sampling point: the four token offsets (in tokens, relative to the level start) and
// weights; a corner outside the map has weight 0 and is not read.
template <typename acc_t>
struct Corners {
  int off[4];
  bool in[4];
  acc_t lh, lw, hh, hw;
};

// Returns false when the point lies entirely outside the map (all four corners out: the sample is zero).
template <typename acc_t>
__device__ __forceinline__ bool make_corners(acc_t x, acc_t y, int H, int W, Corners<acc_t>& c) {
  const acc_t h_im = y * static_cast<acc_t>(H) - static_cast<acc_t>(0.5);
  const acc_t w_im = x * static_cast<acc_t>(W) - static_cast<acc_t>(0.5);
  if (!(h_im > static_cast<acc_t>(-1) && w_im > static_cast<acc_t>(-1) && h_im < static_cast<acc_t>(H) &&
        w_im < static_cast<acc_t>(W))) {
    return false;
  }
  const int h_lo = static_cast<int>(floor(h_im));
  const int w_lo = static_cast<int>(floor(w_im));
  const int h_hi = h_lo + 1, w_hi = w_lo + 1;
  c.lh = h_im - static_cast<acc_t>(h_lo);
  c.lw = w_im - static_cast<acc_t>(w_lo);
  c.hh = static_cast<acc_t>(1) - c.lh;
  c.hw = static_cast<acc_t>(1) - c.lw;
  c.in[0] = h_lo >= 0 && w_lo >= 0;
  c.in[1] = h_lo >= 0 && w_hi <= W - 1;
  c.in[2] = h_hi <= H - 1 && w_lo >= 0;
  c.in[3] = h_hi <= H - 1 && w_hi <= W - 1;
  c.off[0] = h_lo * W + w_lo;
  c.off[1] = h_lo * W + w_hi;
  c.off[2] = h_hi * W + w_lo;
  c.off[3] = h_hi * W + w_hi;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------------------------
template <typename scalar_t, typename loc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                        const int64_t* __restrict__ level_start, const loc_t* __restrict__ loc,
                        const loc_t* __restrict__ attw, scalar_t* __restrict__ out, int S, int M, int D, int Q,
                        int L, int P, int G, int64_t num_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ int s_level[];
  load_levels(s_level, spatial_shapes, level_start, L, S);
  __syncthreads();

  const int lane = threadIdx.x & (G - 1);
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool valid = group < num_groups;  // whole groups are valid or not: G divides the warp size
  const int64_t g = valid ? group : 0;
  const int q = static_cast<int>(g % Q);
  const int64_t bm = g / Q;
  const int m = static_cast<int>(bm % M);
  const int64_t b = bm / M;
  const int64_t bqm = (b * Q + q) * M + m;
  const int LP = L * P;
  const loc_t* loc_g = loc + bqm * LP * 2;
  const loc_t* w_g = attw + bqm * LP;
  const int64_t tok_stride = static_cast<int64_t>(M) * D;
  const scalar_t* val_g = value + b * S * tok_stride + static_cast<int64_t>(m) * D;
  scalar_t* out_g = out + bqm * D;

  const int span = G * VEC;
  const int d_round = ((D + span - 1) / span) * span;  // same trip count for every lane: shuffles stay uniform
  for (int c0 = lane * VEC; c0 < d_round; c0 += span) {
    const bool active = valid && c0 < D;
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = static_cast<acc_t>(0);

    for (int p0 = 0; p0 < LP; p0 += G) {
      const int pp = p0 + lane;
      acc_t my_x = 0, my_y = 0, my_w = 0;
      if (valid && pp < LP) {
        my_x = static_cast<acc_t>(loc_g[2 * pp]);
        my_y = static_cast<acc_t>(loc_g[2 * pp + 1]);
        my_w = static_cast<acc_t>(w_g[pp]);
      }
      const int n = min(G, LP - p0);
      for (int j = 0; j < n; ++j) {
        const acc_t x = __shfl_sync(kFullMask, my_x, j, G);
        const acc_t y = __shfl_sync(kFullMask, my_y, j, G);
        const acc_t aw = __shfl_sync(kFullMask, my_w, j, G);
        const int l = (p0 + j) / P;
        const int H = s_level[3 * l], W = s_level[3 * l + 1], st = s_level[3 * l + 2];
        Corners<acc_t> cr;
        if (active && make_corners(x, y, H, W, cr)) {
          const acc_t cw[4] = {aw * cr.hh * cr.hw, aw * cr.hh * cr.lw, aw * cr.lh * cr.hw, aw * cr.lh * cr.lw};
          const scalar_t* base = val_g + static_cast<int64_t>(st) * tok_stride + c0;
#pragma unroll
          for (int corner = 0; corner < 4; ++corner) {
            if (cr.in[corner]) {
              const Pack<scalar_t, VEC> v = load_pack<scalar_t, VEC>(base + cr.off[corner] * tok_stride);
#pragma unroll
              for (int k = 0; k < VEC; ++k) acc[k] += cw[corner] * static_cast<acc_t>(v.v[k]);
            }
          }
        }
      }
    }
    if (active) {
      Pack<scalar_t, VEC> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = static_cast<scalar_t>(acc[k]);
      *reinterpret_cast<Pack<scalar_t, VEC>*>(out_g + c0) = o;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------------------------------------------
// Stages a profiling variant leaves out (MODE of msda_backward_kernel; 0 = the real kernel).
constexpr int kSkipScatter = 1;     // no grad_value atomics
constexpr int kSkipPointGrads = 2;  // no value gathers, dot products, location / weight gradients (written as 0)

// p[2k], p[2k + 1] += the two halves of word[k], k < N: packed half2 / bfloat162 atomics, one pair at a time.
template <bool kHalf, int N, typename T>
__device__ __forceinline__ void atomic_add_pairs(T* p, const uint32_t (&word)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const unsigned short lo = static_cast<unsigned short>(word[k] & 0xffffu);
    const unsigned short hi = static_cast<unsigned short>(word[k] >> 16);
    if constexpr (kHalf) {
      atomicAdd(reinterpret_cast<__half2*>(p) + k, __halves2half2(__ushort_as_half(lo), __ushort_as_half(hi)));
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
      // no bfloat162 atomics before sm_80: compare-and-swap on the 32-bit word
      unsigned int* addr = reinterpret_cast<unsigned int*>(p) + k;
      const float add_lo = __bfloat162float(__ushort_as_bfloat16(lo));
      const float add_hi = __bfloat162float(__ushort_as_bfloat16(hi));
      unsigned int old = *addr, assumed;
      do {
        assumed = old;
        const auto cur_lo = static_cast<unsigned short>(assumed & 0xffffu);
        const auto cur_hi = static_cast<unsigned short>(assumed >> 16);
        const float sum_lo = __bfloat162float(__ushort_as_bfloat16(cur_lo)) + add_lo;
        const float sum_hi = __bfloat162float(__ushort_as_bfloat16(cur_hi)) + add_hi;
        const unsigned int sum = static_cast<unsigned int>(__bfloat16_as_ushort(__float2bfloat16_rn(sum_lo))) |
                                 (static_cast<unsigned int>(__bfloat16_as_ushort(__float2bfloat16_rn(sum_hi))) << 16);
        old = atomicCAS(addr, assumed, sum);
      } while (old != assumed);
#else
      atomicAdd(reinterpret_cast<__nv_bfloat162*>(p) + k,
                __halves2bfloat162(__ushort_as_bfloat16(lo), __ushort_as_bfloat16(hi)));
#endif
    }
  }
}

// grad_value += scale * go over VEC channels. grad_t float: float4 vector atomics on sm_90 (VEC % 4 == 0), scalar
// atomics otherwise; double: scalar atomics; c10::Half / c10::BFloat16 (variants "native*"): packed pair atomics.
template <typename grad_t, typename acc_t, typename scalar_t, int VEC>
__device__ __forceinline__ void atomic_add_pack(grad_t* p, acc_t scale, const Pack<scalar_t, VEC>& go) {
  if constexpr (std::is_same<grad_t, c10::Half>::value || std::is_same<grad_t, c10::BFloat16>::value) {
    static_assert(VEC % 2 == 0, "packed half atomics need an even channel count per lane");
    constexpr bool kHalf = std::is_same<grad_t, c10::Half>::value;
    uint32_t word[VEC / 2];  // pairs of rounded products, low channel in the low half
#pragma unroll
    for (int k = 0; k < VEC / 2; ++k) {
      const float a = scale * static_cast<float>(go.v[2 * k]), b = scale * static_cast<float>(go.v[2 * k + 1]);
      if constexpr (kHalf) {
        word[k] = static_cast<uint32_t>(__half_as_ushort(__float2half_rn(a))) |
                  (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(b))) << 16);
      } else {
        word[k] = static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(a))) |
                  (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(b))) << 16);
      }
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (VEC == 8) {  // 16 bytes: one vector reduction (PTX ISA 8.1, sm_90)
      if constexpr (kHalf) {
        asm volatile("red.global.add.noftz.v4.f16x2 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(word[0]), "r"(word[1]),
                     "r"(word[2]), "r"(word[3])
                     : "memory");
      } else {
        asm volatile("red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(word[0]), "r"(word[1]),
                     "r"(word[2]), "r"(word[3])
                     : "memory");
      }
    } else if constexpr (VEC == 4) {  // 8 bytes
      if constexpr (kHalf) {
        asm volatile("red.global.add.noftz.v2.f16x2 [%0], {%1, %2};" ::"l"(p), "r"(word[0]), "r"(word[1]) : "memory");
      } else {
        asm volatile("red.global.add.noftz.v2.bf16x2 [%0], {%1, %2};" ::"l"(p), "r"(word[0]), "r"(word[1])
                     : "memory");
      }
    } else {
      atomic_add_pairs<kHalf, VEC / 2>(p, word);
    }
#else
    atomic_add_pairs<kHalf, VEC / 2>(p, word);
#endif
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr bool kFloat4 = std::is_same<grad_t, float>::value && VEC % 4 == 0;  // sm_90 vector atomics
#else
    constexpr bool kFloat4 = false;
#endif
    if constexpr (kFloat4) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#pragma unroll
      for (int k = 0; k < VEC; k += 4) {
        atomicAdd(reinterpret_cast<float4*>(p + k),
                  make_float4(scale * static_cast<float>(go.v[k]), scale * static_cast<float>(go.v[k + 1]),
                              scale * static_cast<float>(go.v[k + 2]), scale * static_cast<float>(go.v[k + 3])));
      }
#endif
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) atomicAdd(p + k, static_cast<grad_t>(scale * static_cast<acc_t>(go.v[k])));
    }
  }
}

// The backward work of one sampling point for the lanes of one group: scatter into grad_value and the partial sums
// over this lane's channels of the location / weight gradients (gx, gy, gw; reduced over the group by the caller).
template <typename scalar_t, typename grad_t, int VEC, int MODE, typename acc_t>
__device__ __forceinline__ void backward_point(const scalar_t* __restrict__ val_g, grad_t* __restrict__ gval_g,
                                               const scalar_t* __restrict__ gout_g, int64_t tok_stride, int D,
                                               int lane, int span, acc_t x, acc_t y, acc_t aw, int H, int W, int st,
                                               acc_t& gx, acc_t& gy, acc_t& gw) {
  Corners<acc_t> cr;
  if (!make_corners(x, y, H, W, cr)) return;
  const acc_t cw[4] = {cr.hh * cr.hw, cr.hh * cr.lw, cr.lh * cr.hw, cr.lh * cr.lw};
  const int64_t level_off = static_cast<int64_t>(st) * tok_stride;
  // dot[c] = sum over this lane's channels of grad_out * value at corner c; the sample and its derivatives in lw, lh
  // are linear in the corners, so the three gradients follow from these four numbers.
  acc_t dot[4] = {0, 0, 0, 0};
  for (int c0 = lane * VEC; c0 < D; c0 += span) {
    const Pack<scalar_t, VEC> go = load_pack<scalar_t, VEC>(gout_g + c0);
#pragma unroll
    for (int corner = 0; corner < 4; ++corner) {
      if (cr.in[corner]) {
        const int64_t off = level_off + cr.off[corner] * tok_stride + c0;
        if constexpr (!(MODE & kSkipPointGrads)) {
          const Pack<scalar_t, VEC> v = load_pack<scalar_t, VEC>(val_g + off);
#pragma unroll
          for (int k = 0; k < VEC; ++k) dot[corner] += static_cast<acc_t>(go.v[k]) * static_cast<acc_t>(v.v[k]);
        }
        if constexpr (!(MODE & kSkipScatter)) {
          atomic_add_pack<grad_t, acc_t, scalar_t, VEC>(gval_g + off, aw * cw[corner], go);
        }
      }
    }
  }
  if constexpr (!(MODE & kSkipPointGrads)) {
    gw = cw[0] * dot[0] + cw[1] * dot[1] + cw[2] * dot[2] + cw[3] * dot[3];
    // d sample / d lw = hh (v1 - v0) + lh (v3 - v2); d w_im / d x = W
    gx = aw * static_cast<acc_t>(W) * (cr.hh * (dot[1] - dot[0]) + cr.lh * (dot[3] - dot[2]));
    // d sample / d lh = hw (v2 - v0) + lw (v3 - v1); d h_im / d y = H
    gy = aw * static_cast<acc_t>(H) * (cr.hw * (dot[2] - dot[0]) + cr.lw * (dot[3] - dot[1]));
  }
}

// Sums gx, gy, gw over the G lanes of each group (every lane of the warp must execute this).
template <typename acc_t>
__device__ __forceinline__ void group_sum3(acc_t& gx, acc_t& gy, acc_t& gw, int G) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    if (offset < G) {
      gx += __shfl_xor_sync(kFullMask, gx, offset, G);
      gy += __shfl_xor_sync(kFullMask, gy, offset, G);
      gw += __shfl_xor_sync(kFullMask, gw, offset, G);
    }
  }
}

// Default mapping: a group of G lanes per (batch, query, head) walks the group's L * P points one after the other.
template <typename scalar_t, typename loc_t, typename grad_t, int VEC, int MODE>
__global__ void __launch_bounds__(kThreads)
    msda_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
                         const int64_t* __restrict__ spatial_shapes, const int64_t* __restrict__ level_start,
                         const loc_t* __restrict__ loc, const loc_t* __restrict__ attw,
                         grad_t* __restrict__ grad_value, loc_t* __restrict__ grad_loc,
                         loc_t* __restrict__ grad_attw, int S, int M, int D, int Q, int L, int P, int G,
                         int64_t num_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ int s_level[];
  load_levels(s_level, spatial_shapes, level_start, L, S);
  __syncthreads();

  const int lane = threadIdx.x & (G - 1);
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool valid = group < num_groups;
  const int64_t g = valid ? group : 0;
  const int q = static_cast<int>(g % Q);
  const int64_t bm = g / Q;
  const int m = static_cast<int>(bm % M);
  const int64_t b = bm / M;
  const int64_t bqm = (b * Q + q) * M + m;
  const int LP = L * P;
  const loc_t* loc_g = loc + bqm * LP * 2;
  const loc_t* w_g = attw + bqm * LP;
  const int64_t tok_stride = static_cast<int64_t>(M) * D;
  const int64_t val_off = b * S * tok_stride + static_cast<int64_t>(m) * D;
  const scalar_t* val_g = value + val_off;
  grad_t* gval_g = grad_value + val_off;
  const scalar_t* gout_g = grad_out + bqm * D;
  const int span = G * VEC;

  for (int p0 = 0; p0 < LP; p0 += G) {
    const int pp = p0 + lane;
    acc_t my_x = 0, my_y = 0, my_w = 0;
    if (valid && pp < LP) {
      my_x = static_cast<acc_t>(loc_g[2 * pp]);
      my_y = static_cast<acc_t>(loc_g[2 * pp + 1]);
      my_w = static_cast<acc_t>(w_g[pp]);
    }
    acc_t keep_x = 0, keep_y = 0, keep_w = 0;  // lane j keeps the grads of point p0 + j
    const int n = min(G, LP - p0);
    for (int j = 0; j < n; ++j) {
      const acc_t x = __shfl_sync(kFullMask, my_x, j, G);
      const acc_t y = __shfl_sync(kFullMask, my_y, j, G);
      const acc_t aw = __shfl_sync(kFullMask, my_w, j, G);
      const int l = (p0 + j) / P;
      const int H = s_level[3 * l], W = s_level[3 * l + 1], st = s_level[3 * l + 2];
      acc_t gx = 0, gy = 0, gw = 0;  // partial sums over this lane's channels
      if (valid) {
        backward_point<scalar_t, grad_t, VEC, MODE>(val_g, gval_g, gout_g, tok_stride, D, lane, span, x, y, aw, H, W,
                                                    st, gx, gy, gw);
      }
      if constexpr (!(MODE & kSkipPointGrads)) group_sum3(gx, gy, gw, G);
      if (lane == j) {
        keep_x = gx;
        keep_y = gy;
        keep_w = gw;
      }
    }
    if (valid && pp < LP) {
      grad_loc[(bqm * LP + pp) * 2] = static_cast<loc_t>(keep_x);
      grad_loc[(bqm * LP + pp) * 2 + 1] = static_cast<loc_t>(keep_y);
      grad_attw[bqm * LP + pp] = static_cast<loc_t>(keep_w);
    }
  }
}

// Point-parallel mapping (variant "point_parallel"): one warp per (batch, query, head), split into 32 / G slots of G
// channel lanes; slot s handles points s, s + 32 / G, ..., so a warp works on 32 / G points at once instead of one.
// Same arithmetic per point as the default kernel; 32 / G times the threads for the same work, which pays when the
// default grid is too small to hide the gathers' latency (300 decoder queries: 4,800 groups of 8 lanes).
template <typename scalar_t, typename loc_t, typename grad_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    msda_backward_pp_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ value,
                            const int64_t* __restrict__ spatial_shapes, const int64_t* __restrict__ level_start,
                            const loc_t* __restrict__ loc, const loc_t* __restrict__ attw,
                            grad_t* __restrict__ grad_value, loc_t* __restrict__ grad_loc,
                            loc_t* __restrict__ grad_attw, int S, int M, int D, int Q, int L, int P, int G,
                            int64_t num_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ int s_level[];
  load_levels(s_level, spatial_shapes, level_start, L, S);
  __syncthreads();

  const int warp_lane = threadIdx.x & 31;
  const int lane = warp_lane & (G - 1);  // channel lane within the slot
  const int slot = warp_lane / G;
  const int slots = 32 / G;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const bool valid = group < num_groups;  // whole warps are valid or not
  const int64_t g = valid ? group : 0;
  const int q = static_cast<int>(g % Q);
  const int64_t bm = g / Q;
  const int m = static_cast<int>(bm % M);
  const int64_t b = bm / M;
  const int64_t bqm = (b * Q + q) * M + m;
  const int LP = L * P;
  const loc_t* loc_g = loc + bqm * LP * 2;
  const loc_t* w_g = attw + bqm * LP;
  const int64_t tok_stride = static_cast<int64_t>(M) * D;
  const int64_t val_off = b * S * tok_stride + static_cast<int64_t>(m) * D;
  const scalar_t* val_g = value + val_off;
  grad_t* gval_g = grad_value + val_off;
  const scalar_t* gout_g = grad_out + bqm * D;
  const int span = G * VEC;

  for (int p0 = 0; p0 < LP; p0 += slots) {  // same trip count for the whole warp: the shuffles stay uniform
    const int pp = p0 + slot;
    const bool active = valid && pp < LP;
    acc_t gx = 0, gy = 0, gw = 0;
    if (active) {
      const acc_t x = static_cast<acc_t>(loc_g[2 * pp]);
      const acc_t y = static_cast<acc_t>(loc_g[2 * pp + 1]);
      const acc_t aw = static_cast<acc_t>(w_g[pp]);
      const int l = pp / P;
      const int H = s_level[3 * l], W = s_level[3 * l + 1], st = s_level[3 * l + 2];
      backward_point<scalar_t, grad_t, VEC, 0>(val_g, gval_g, gout_g, tok_stride, D, lane, span, x, y, aw, H, W, st,
                                               gx, gy, gw);
    }
    group_sum3(gx, gy, gw, G);
    if (active && lane == 0) {
      grad_loc[(bqm * LP + pp) * 2] = static_cast<loc_t>(gx);
      grad_loc[(bqm * LP + pp) * 2 + 1] = static_cast<loc_t>(gy);
      grad_attw[bqm * LP + pp] = static_cast<loc_t>(gw);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// launch configuration
// ---------------------------------------------------------------------------------------------------------------
struct LaunchShape {
  int B, S, M, D, Q, L, P, G;
  int64_t num_groups;
  int blocks;
  size_t smem;
};

int next_pow2(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

bool aligned_to(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }
bool aligned16(const void* p) { return aligned_to(p, 16); }

// lanes_per_group: G (default mapping) or 32 (point-parallel: one warp per group)
LaunchShape launch_shape(const at::Tensor& value, const at::Tensor& sampling_locations, int vec,
                         bool warp_per_group = false) {
  LaunchShape s;
  s.B = static_cast<int>(value.size(0));
  s.S = static_cast<int>(value.size(1));
  s.M = static_cast<int>(value.size(2));
  s.D = static_cast<int>(value.size(3));
  s.Q = static_cast<int>(sampling_locations.size(1));
  s.L = static_cast<int>(sampling_locations.size(3));
  s.P = static_cast<int>(sampling_locations.size(4));
  s.G = std::min(32, next_pow2((s.D + vec - 1) / vec));
  s.num_groups = static_cast<int64_t>(s.B) * s.M * s.Q;
  const int64_t groups_per_block = kThreads / (warp_per_group ? 32 : s.G);
  const int64_t blocks = (s.num_groups + groups_per_block - 1) / groups_per_block;
  TORCH_CHECK(blocks <= INT32_MAX, "ms_deform_attn: too many (batch, query, head) triples for one launch");
  s.blocks = static_cast<int>(blocks);
  s.smem = static_cast<size_t>(3 * s.L) * sizeof(int);
  return s;
}

template <typename scalar_t>
constexpr int full_vec() {
  return 16 / static_cast<int>(sizeof(scalar_t));  // 16-byte loads: 2 double, 4 float, 8 half / bfloat16
}

template <typename scalar_t, typename loc_t>
void forward_typed(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& starts,
                   const at::Tensor& loc, const at::Tensor& attw, at::Tensor& out) {
  constexpr int kVec = full_vec<scalar_t>();
  const bool vec = value.size(3) % kVec == 0 && aligned16(value.data_ptr()) && aligned16(out.data_ptr());
  const LaunchShape s = launch_shape(value, loc, vec ? kVec : 1);
  if (s.num_groups == 0 || s.D == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto* v = value.const_data_ptr<scalar_t>();
  const auto* sh = shapes.const_data_ptr<int64_t>();
  const auto* st = starts.const_data_ptr<int64_t>();
  const auto* lp = loc.const_data_ptr<loc_t>();
  const auto* wp = attw.const_data_ptr<loc_t>();
  auto* op = out.mutable_data_ptr<scalar_t>();
  if (vec) {
    msda_forward_kernel<scalar_t, loc_t, kVec><<<s.blocks, kThreads, s.smem, stream>>>(
        v, sh, st, lp, wp, op, s.S, s.M, s.D, s.Q, s.L, s.P, s.G, s.num_groups);
  } else {
    msda_forward_kernel<scalar_t, loc_t, 1><<<s.blocks, kThreads, s.smem, stream>>>(
        v, sh, st, lp, wp, op, s.S, s.M, s.D, s.Q, s.L, s.P, s.G, s.num_groups);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Pointers of one backward call.
template <typename scalar_t, typename loc_t>
struct BackwardArgs {
  const scalar_t* grad_out;
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const loc_t* loc;
  const loc_t* attw;
  void* grad_value;  // grad_t*: float / double, or scalar_t for the native variants
  loc_t* grad_loc;
  loc_t* grad_attw;
};

template <typename scalar_t, typename loc_t, typename grad_t, int VEC, int MODE>
void launch_backward(const BackwardArgs<scalar_t, loc_t>& a, const at::Tensor& value, const at::Tensor& loc) {
  const LaunchShape s = launch_shape(value, loc, VEC);
  msda_backward_kernel<scalar_t, loc_t, grad_t, VEC, MODE>
      <<<s.blocks, kThreads, s.smem, c10::cuda::getCurrentCUDAStream()>>>(
          a.grad_out, a.value, a.shapes, a.starts, a.loc, a.attw, static_cast<grad_t*>(a.grad_value), a.grad_loc,
          a.grad_attw, s.S, s.M, s.D, s.Q, s.L, s.P, s.G, s.num_groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename loc_t, typename grad_t, int VEC>
void launch_backward_pp(const BackwardArgs<scalar_t, loc_t>& a, const at::Tensor& value, const at::Tensor& loc) {
  const LaunchShape s = launch_shape(value, loc, VEC, /*warp_per_group=*/true);
  msda_backward_pp_kernel<scalar_t, loc_t, grad_t, VEC>
      <<<s.blocks, kThreads, s.smem, c10::cuda::getCurrentCUDAStream()>>>(
          a.grad_out, a.value, a.shapes, a.starts, a.loc, a.attw, static_cast<grad_t*>(a.grad_value), a.grad_loc,
          a.grad_attw, s.S, s.M, s.D, s.Q, s.L, s.P, s.G, s.num_groups);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// True when the default grid (G lanes per group) holds fewer threads than the GPU can keep resident at once.
bool default_grid_underfills(const LaunchShape& s) {
  int device = 0, sms = 0, threads_per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return s.num_groups * s.G < static_cast<int64_t>(sms) * threads_per_sm;
}

// Returns grad_value (value's dtype); fills grad_loc / grad_attw.
template <typename scalar_t, typename loc_t>
at::Tensor backward_typed(const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& shapes,
                          const at::Tensor& starts, const at::Tensor& loc, const at::Tensor& attw,
                          at::Tensor& grad_loc, at::Tensor& grad_attw, int64_t variant) {
  using acc_grad_t = at::opmath_type<scalar_t>;  // float, or double for double
  constexpr bool kHalfType = sizeof(scalar_t) == 2;
  constexpr int kVec = full_vec<scalar_t>();
  namespace bv = backward_variant;
  const bool profiling = variant == bv::kNoScatter || variant == bv::kNoPointGrads || variant == bv::kSkeleton;
  constexpr bool kFloatLoc = std::is_same<loc_t, float>::value;
  TORCH_CHECK(!profiling || kFloatLoc,
              "ms_deform_attn_backward: the profiling variants (1-3) need float32 sampling_locations");
  // channels per lane: the full 16-byte vector, or 4 for half types in the variants that ask for it
  const bool four = kHalfType && (variant == bv::kVec4 || variant == bv::kNativeVec4 ||
                                  variant == bv::kPointParallel || variant == bv::kAuto);
  const int vec = four ? 4 : kVec;
  const int vec_bytes = vec * static_cast<int>(sizeof(scalar_t));
  const bool vectorised = value.size(3) % vec == 0 && aligned_to(value.data_ptr(), vec_bytes) &&
                          aligned_to(grad_out.data_ptr(), vec_bytes);
  // every variant needs the vectorised path; other inputs run the default scalar kernel
  const bool native = vectorised && kHalfType && (variant == bv::kNative || variant == bv::kNativeVec4);
  const auto buf_type = native ? value.scalar_type() : c10::CppTypeToScalarType<acc_grad_t>::value;
  const auto buf_options = value.options().dtype(buf_type);
  at::Tensor buf = variant == bv::kNoZeroFill ? at::empty(value.sizes(), buf_options)
                                              : at::zeros(value.sizes(), buf_options);

  const LaunchShape s = launch_shape(value, loc, vectorised ? vec : 1);
  if (s.num_groups == 0) return buf.to(value.scalar_type());
  if (s.D == 0) {  // nothing to sample: every gradient is zero
    grad_loc.zero_();
    grad_attw.zero_();
    return buf.to(value.scalar_type());
  }
  const BackwardArgs<scalar_t, loc_t> a{grad_out.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                                        shapes.const_data_ptr<int64_t>(),     starts.const_data_ptr<int64_t>(),
                                        loc.const_data_ptr<loc_t>(),          attw.const_data_ptr<loc_t>(),
                                        buf.data_ptr(),                       grad_loc.mutable_data_ptr<loc_t>(),
                                        grad_attw.mutable_data_ptr<loc_t>()};
  const bool point_parallel =
      vectorised && (variant == bv::kPointParallel || (variant == bv::kAuto && default_grid_underfills(s)));

  if (!vectorised) {
    launch_backward<scalar_t, loc_t, acc_grad_t, 1, 0>(a, value, loc);
  } else if (profiling) {
    if constexpr (kFloatLoc) {
      if (variant == bv::kNoScatter) launch_backward<scalar_t, loc_t, acc_grad_t, kVec, kSkipScatter>(a, value, loc);
      if (variant == bv::kNoPointGrads) {
        launch_backward<scalar_t, loc_t, acc_grad_t, kVec, kSkipPointGrads>(a, value, loc);
      }
      if (variant == bv::kSkeleton) {
        launch_backward<scalar_t, loc_t, acc_grad_t, kVec, kSkipScatter | kSkipPointGrads>(a, value, loc);
      }
    }
  } else if (point_parallel) {
    launch_backward_pp<scalar_t, loc_t, acc_grad_t, (kHalfType ? 4 : kVec)>(a, value, loc);
  } else if constexpr (kHalfType) {
    if (native && four) {
      launch_backward<scalar_t, loc_t, scalar_t, 4, 0>(a, value, loc);
    } else if (native) {
      launch_backward<scalar_t, loc_t, scalar_t, kVec, 0>(a, value, loc);
    } else if (four) {
      launch_backward<scalar_t, loc_t, acc_grad_t, 4, 0>(a, value, loc);
    } else {
      launch_backward<scalar_t, loc_t, acc_grad_t, kVec, 0>(a, value, loc);
    }
  } else {
    launch_backward<scalar_t, loc_t, acc_grad_t, kVec, 0>(a, value, loc);
  }

  if (buf_type == value.scalar_type()) return buf;
  if (variant == bv::kNoConvert) return at::empty(value.sizes(), value.options());  // profiling: conversion skipped
  return buf.to(value.scalar_type());
}

// Calls Fn<scalar_t, loc_t>::run(args...) for the supported (value, locations) dtype pairs.
template <template <typename, typename> class Fn, typename... Args>
void dispatch_types(at::ScalarType value_type, at::ScalarType loc_type, const char* where, Args&&... args) {
  using at::ScalarType;
  const bool loc_f32 = loc_type == ScalarType::Float;
  switch (value_type) {
    case ScalarType::Double:
      if (loc_type == ScalarType::Double) return Fn<double, double>::run(std::forward<Args>(args)...);
      break;
    case ScalarType::Float:
      if (loc_f32) return Fn<float, float>::run(std::forward<Args>(args)...);
      break;
    case ScalarType::Half:
      if (loc_f32) return Fn<c10::Half, float>::run(std::forward<Args>(args)...);
      if (loc_type == ScalarType::Half) return Fn<c10::Half, c10::Half>::run(std::forward<Args>(args)...);
      break;
    case ScalarType::BFloat16:
      if (loc_f32) return Fn<c10::BFloat16, float>::run(std::forward<Args>(args)...);
      if (loc_type == ScalarType::BFloat16) return Fn<c10::BFloat16, c10::BFloat16>::run(std::forward<Args>(args)...);
      break;
    default:
      break;
  }
  TORCH_CHECK(false, std::string(where) + ": unsupported dtype combination value=" + c10::toString(value_type) +
                         ", sampling_locations=" + c10::toString(loc_type));
}

template <typename scalar_t, typename loc_t>
struct ForwardFn {
  template <typename... A>
  static void run(A&&... a) {
    forward_typed<scalar_t, loc_t>(std::forward<A>(a)...);
  }
};

template <typename scalar_t, typename loc_t>
struct BackwardFn {
  template <typename... A>
  static void run(at::Tensor& grad_value, A&&... a) {
    grad_value = backward_typed<scalar_t, loc_t>(std::forward<A>(a)...);
  }
};

}  // namespace

void forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                  const at::Tensor& sampling_locations, const at::Tensor& attention_weights, at::Tensor& output) {
  dispatch_types<ForwardFn>(value.scalar_type(), sampling_locations.scalar_type(), "ms_deform_attn", value,
                            spatial_shapes, level_start_index, sampling_locations, attention_weights, output);
}

at::Tensor backward_cuda(const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                         const at::Tensor& attention_weights, at::Tensor& grad_sampling_locations,
                         at::Tensor& grad_attention_weights, int64_t variant) {
  at::Tensor grad_value;
  dispatch_types<BackwardFn>(value.scalar_type(), sampling_locations.scalar_type(), "ms_deform_attn_backward",
                             grad_value, grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, grad_sampling_locations, grad_attention_weights, variant);
  return grad_value;
}

}  // namespace msda
}  // namespace detrex
