// Multi-scale deformable attention: operator schema, input checks, dtype policy and the Python module entry point.
//
// Registers (TORCH_LIBRARY, CUDA kernels only):
//   detrex::ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
//                          im2col_step=64) -> output (B, Q, M * D)
//   detrex::ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
//                                   attention_weights, im2col_step=64) -> (grad_value, grad_sampling_locations,
//                                                                          grad_attention_weights)
// The fake (meta) kernels and the autograd formula are registered from Python by detrex/layers/msda_op.py, which
// this module imports when it is itself imported, so `import detrex._C` alone yields a complete op.
//
// dtype policy: value may be float64, float32, float16 or bfloat16; the output and grad_value have value's dtype.
// Locations and weights are read as float32 when value is float16/bfloat16 and either of them is float32 (what
// autocast produces), as value's dtype when both have it, and are cast to value's dtype for float32/float64 values.
// Their gradients come back in their own dtypes. Accumulation is in float32 (float64 for float64).
// im2col_step is accepted for compatibility with the original op and ignored: the whole batch is one launch, any
// batch size works.
#include <Python.h>

#include "msda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace detrex {
namespace msda {
namespace {

bool supported_value_dtype(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_inputs(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights, int64_t im2col_step) {
  TORCH_CHECK(value.is_cuda(), op, ": value must be a CUDA tensor, got device ", value.device(),
              " (the pure-PyTorch op serves other devices)");
  TORCH_CHECK(value.dim() == 4, op, ": value must be (B, S, M, D) = (batch, tokens, heads, channels per head), got ",
              value.sizes());
  TORCH_CHECK(supported_value_dtype(value.scalar_type()), op,
              ": value must be float64, float32, float16 or bfloat16, got ", value.scalar_type());
  TORCH_CHECK(value.is_contiguous(), op, ": value must be contiguous (call .contiguous()), got shape ",
              value.sizes(), " with strides ", value.strides());
  const int64_t B = value.size(0), M = value.size(2);

  TORCH_CHECK(sampling_locations.device() == value.device(), op, ": sampling_locations must be on value's device ",
              value.device(), ", got ", sampling_locations.device());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(0) == B && sampling_locations.size(2) == M &&
                  sampling_locations.size(5) == 2,
              op, ": sampling_locations must be (B, Q, M, L, P, 2) with B=", B, ", M=", M, " (value ", value.sizes(),
              "), got ", sampling_locations.sizes());
  TORCH_CHECK(at::isFloatingType(sampling_locations.scalar_type()), op,
              ": sampling_locations must be a floating-point tensor, got ", sampling_locations.scalar_type());
  TORCH_CHECK(sampling_locations.is_contiguous(), op,
              ": sampling_locations must be contiguous (call .contiguous()), got strides ",
              sampling_locations.strides());

  TORCH_CHECK(attention_weights.device() == value.device(), op, ": attention_weights must be on value's device ",
              value.device(), ", got ", attention_weights.device());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), op,
              ": attention_weights must be (B, Q, M, L, P) = ", sampling_locations.sizes().slice(0, 5),
              " to match sampling_locations, got ", attention_weights.sizes());
  TORCH_CHECK(at::isFloatingType(attention_weights.scalar_type()), op,
              ": attention_weights must be a floating-point tensor, got ", attention_weights.scalar_type());
  TORCH_CHECK(attention_weights.is_contiguous(), op,
              ": attention_weights must be contiguous (call .contiguous()), got strides ",
              attention_weights.strides());

  const int64_t L = sampling_locations.size(3);
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == L && spatial_shapes.size(1) == 2, op,
              ": spatial_shapes must be (L, 2) = (", L, ", 2) holding (H_l, W_l), got ", spatial_shapes.sizes());
  TORCH_CHECK(!at::isFloatingType(spatial_shapes.scalar_type()) && !at::isComplexType(spatial_shapes.scalar_type()),
              op, ": spatial_shapes must be an integer tensor, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(spatial_shapes.is_cpu() || spatial_shapes.device() == value.device(), op,
              ": spatial_shapes must be on value's device ", value.device(), " or on the CPU, got ",
              spatial_shapes.device());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, op,
              ": level_start_index must be (L,) = (", L, ",), got ", level_start_index.sizes());
  TORCH_CHECK(!at::isFloatingType(level_start_index.scalar_type()) &&
                  !at::isComplexType(level_start_index.scalar_type()),
              op, ": level_start_index must be an integer tensor, got ", level_start_index.scalar_type());
  TORCH_CHECK(level_start_index.is_cpu() || level_start_index.device() == value.device(), op,
              ": level_start_index must be on value's device ", value.device(), " or on the CPU, got ",
              level_start_index.device());
  TORCH_CHECK(im2col_step > 0, op, ": im2col_step must be positive, got ", im2col_step);

  TORCH_CHECK(value.size(1) <= INT32_MAX && value.size(3) <= INT32_MAX && sampling_locations.size(1) <= INT32_MAX &&
                  L * sampling_locations.size(4) <= INT32_MAX,
              op, ": sizes beyond 2^31 are not supported");
}

// The dtype the kernels read locations and weights in (see the policy at the top of this file).
at::ScalarType location_dtype(const at::Tensor& value, const at::Tensor& loc, const at::Tensor& attw) {
  const auto v = value.scalar_type();
  if (v == at::kDouble || v == at::kFloat) return v;
  return (loc.scalar_type() == v && attw.scalar_type() == v) ? v : at::kFloat;
}

at::Tensor as_long(const at::Tensor& t, const at::Device& device) {
  return t.to(device, at::kLong).contiguous();
}

at::Tensor ms_deform_attn_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, int64_t im2col_step) {
  check_inputs("ms_deform_attn", value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
               im2col_step);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto loc_type = location_dtype(value, sampling_locations, attention_weights);
  const at::Tensor loc = sampling_locations.to(loc_type);
  const at::Tensor attw = attention_weights.to(loc_type);
  const at::Tensor shapes = as_long(spatial_shapes, value.device());
  const at::Tensor starts = as_long(level_start_index, value.device());
  at::Tensor output = at::empty({value.size(0), sampling_locations.size(1), value.size(2) * value.size(3)},
                                value.options());
  forward_cuda(value, shapes, starts, loc, attw, output);
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    int64_t im2col_step) {
  const char* op = "ms_deform_attn_backward";
  check_inputs(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step);
  const int64_t B = value.size(0), Q = sampling_locations.size(1), MD = value.size(2) * value.size(3);
  TORCH_CHECK(grad_output.device() == value.device(), op, ": grad_output must be on value's device ",
              value.device(), ", got ", grad_output.device());
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == B && grad_output.size(1) == Q &&
                  grad_output.size(2) == MD,
              op, ": grad_output must be (B, Q, M * D) = (", B, ", ", Q, ", ", MD, "), got ", grad_output.sizes());
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()), op, ": grad_output must be floating-point, got ",
              grad_output.scalar_type());
  const c10::cuda::CUDAGuard guard(value.device());
  const auto loc_type = location_dtype(value, sampling_locations, attention_weights);
  const at::Tensor loc = sampling_locations.to(loc_type);
  const at::Tensor attw = attention_weights.to(loc_type);
  const at::Tensor shapes = as_long(spatial_shapes, value.device());
  const at::Tensor starts = as_long(level_start_index, value.device());
  const at::Tensor gout = grad_output.to(value.scalar_type()).contiguous();  // autograd may hand a strided grad

  const auto acc_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_value = at::zeros(value.sizes(), value.options().dtype(acc_type));
  at::Tensor grad_loc = at::empty(loc.sizes(), loc.options());
  at::Tensor grad_attw = at::empty(attw.sizes(), attw.options());
  backward_cuda(gout, value, shapes, starts, loc, attw, grad_value, grad_loc, grad_attw);
  return {grad_value.to(value.scalar_type()), grad_loc.to(sampling_locations.scalar_type()),
          grad_attw.to(attention_weights.scalar_type())};
}

}  // namespace
}  // namespace msda
}  // namespace detrex

TORCH_LIBRARY(detrex, m) {
  // register_fake for these ops lives in this Python module (torch checks the pairing)
  m.set_python_module("detrex.layers.msda_op");
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
      "Tensor attention_weights, int im2col_step=64) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, int im2col_step=64) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detrex, CUDA, m) {
  m.impl("ms_deform_attn", &detrex::msda::ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &detrex::msda::ms_deform_attn_backward_cuda);
}

// ---------------------------------------------------------------------------------------------------------------
// Python module: importing it loads the library above, then lets detrex.layers.msda_op register the fake kernels
// and the autograd formula. A failure there fails the import, which the dispatch turns into the pure-PyTorch path.
// ---------------------------------------------------------------------------------------------------------------
#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define DETREX_MSDA_CAT_(a, b) a##b
#define DETREX_MSDA_CAT(a, b) DETREX_MSDA_CAT_(a, b)
#define DETREX_MSDA_STR_(a) #a
#define DETREX_MSDA_STR(a) DETREX_MSDA_STR_(a)

static PyModuleDef detrex_msda_module = {
    PyModuleDef_HEAD_INIT,
    DETREX_MSDA_STR(TORCH_EXTENSION_NAME),
    "detrex compiled ops: registers torch.ops.detrex.ms_deform_attn (CUDA) on import.",
    -1,      // m_size
    nullptr, // m_methods
    nullptr, // m_slots
    nullptr, // m_traverse
    nullptr, // m_clear
    nullptr, // m_free
};

PyMODINIT_FUNC DETREX_MSDA_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  PyObject* module = PyModule_Create(&detrex_msda_module);
  if (module == nullptr) return nullptr;
  PyObject* py_side = PyImport_ImportModule("detrex.layers.msda_op");
  if (py_side == nullptr) {
    Py_DECREF(module);
    return nullptr;
  }
  PyObject* result = PyObject_CallMethod(py_side, "_register_python_side", nullptr);
  Py_DECREF(py_side);
  if (result == nullptr) {
    Py_DECREF(module);
    return nullptr;
  }
  Py_DECREF(result);
  return module;
}
