// Multi-scale deformable attention: operator schema, input checks, dtype policy and the Python module entry point.
//
// Registers (TORCH_LIBRARY):
//   detrex::ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
//                          im2col_step=64) -> output (B, Q, M * D)
//   detrex::ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
//                                   attention_weights, im2col_step=64, variant=0)
//       -> (grad_value, grad_sampling_locations, grad_attention_weights)
// with CUDA kernels, and CPU kernels that only check the inputs: they run every check below and then refuse the
// device, so a CPU-only CI reaches the same checks (and messages) as a GPU.
// The fake (meta) kernels and the autograd formula are registered from Python by detrex/layers/msda_op.py, which
// this module imports when it is itself imported, so `import detrex._C` alone yields a complete op.
//
// Input checks: shapes, dtypes and contiguity first, then sizes, then devices. detrex/layers/msda_op.py
// (check_inputs) runs the same checks with the same messages before it calls the op, so inside this package a bad
// input never reaches this file; these are the second line, for direct torch.ops.detrex calls.
// Every message is built from plain strings and integers (std::to_string, dtype names, Device::str()), never by
// streaming sizes()/strides() or integers through std::ostream (c10::str). On the GPU machine (torch 2.11.0+cu130,
// CUDA 13.0) exactly the three checks whose message streamed integers from this file (value's shape and strides,
// attention_weights' and spatial_shapes' shapes) killed the process with a segfault, while the two that streamed
// only strings (a device: formatted inside libc10; a dtype name: a const char*) raised cleanly. With torch 2.14.1,
// gcc 12.2 and nvcc 13.0 the same five messages raise cleanly (tests/layers/test_msda_cuda.py, CPU kernels), so the
// crash belongs to that build, not to the checks' logic. The likely cause: the extension's inline iostream code
// (std::num_put through the stream's locale) was compiled against a different libstdc++ than the one the process
// loaded (the extension's host compiler vs the torch wheel's and Python's runtime); std::to_string does not touch
// iostreams or locales.
//
// dtype policy: value may be float64, float32, float16 or bfloat16; the output and grad_value have value's dtype.
// Locations and weights are read as float32 when value is float16/bfloat16 and either of them is float32 (what
// autocast produces), as value's dtype when both have it, and are cast to value's dtype for float32/float64 values.
// Their gradients come back in their own dtypes. Accumulation is in float32 (float64 for float64).
// im2col_step is accepted for compatibility with the original op and ignored: the whole batch is one launch, any
// batch size works. variant selects a backward kernel variant (msda.h; 0, the default, unless a benchmark asks).
#include <Python.h>

#include "msda.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <tuple>

namespace detrex {
namespace msda {
namespace {

// ------------------------------------------------------------------------------------------------------------------
// messages: plain strings (see the note at the top)
// ------------------------------------------------------------------------------------------------------------------
void append(std::string& s, const std::string& a) { s += a; }
void append(std::string& s, const char* a) { s += a; }
void append(std::string& s, int64_t v) { s += std::to_string(v); }

template <typename... A>
std::string cat(const A&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

// Python's tuple formatting: (2, 3), (5,), ()
std::string tuple_str(at::IntArrayRef dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  if (dims.size() == 1) s += ",";
  return s + ")";
}

// Python's dtype names (str(torch.float32) == "torch.float32")
std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "torch.float64";
    case at::kFloat: return "torch.float32";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(t);
  }
}

std::string device_str(const at::Tensor& t) { return t.device().str(); }

// Raises c10::Error (Python: RuntimeError), as TORCH_CHECK does.
[[noreturn]] void fail(const std::string& message) { C10_THROW_ERROR(Error, message); }

// The message is built only when the check fails.
#define DETREX_MSDA_CHECK(cond, ...)                                                    \
  do {                                                                                  \
    if (C10_UNLIKELY(!(cond))) ::detrex::msda::fail(::detrex::msda::cat(__VA_ARGS__)); \
  } while (0)

// ------------------------------------------------------------------------------------------------------------------
// checks (the same, in the same order and with the same messages, as detrex/layers/msda_op.py:check_inputs)
// ------------------------------------------------------------------------------------------------------------------
bool supported_value_dtype(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

bool integer_dtype(at::ScalarType t) { return !at::isFloatingType(t) && !at::isComplexType(t) && t != at::kBool; }

// Shapes, dtypes, contiguity and sizes of the forward inputs.
void check_tensors(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, int64_t im2col_step) {
  const at::Tensor& loc = sampling_locations;
  const at::Tensor& attw = attention_weights;
  DETREX_MSDA_CHECK(value.dim() == 4, op,
                    ": value must be (B, S, M, D) = (batch, tokens, heads, channels per head), got ",
                    tuple_str(value.sizes()));
  DETREX_MSDA_CHECK(supported_value_dtype(value.scalar_type()), op,
                    ": value must be float64, float32, float16 or bfloat16, got ", dtype_str(value.scalar_type()));
  DETREX_MSDA_CHECK(value.is_contiguous(), op, ": value must be contiguous (call .contiguous()), got shape ",
                    tuple_str(value.sizes()), " with strides ", tuple_str(value.strides()));
  const int64_t B = value.size(0), M = value.size(2);

  DETREX_MSDA_CHECK(loc.dim() == 6 && loc.size(0) == B && loc.size(2) == M && loc.size(5) == 2, op,
                    ": sampling_locations must be (B, Q, M, L, P, 2) with B=", B, ", M=", M, " (value ",
                    tuple_str(value.sizes()), "), got ", tuple_str(loc.sizes()));
  DETREX_MSDA_CHECK(at::isFloatingType(loc.scalar_type()), op,
                    ": sampling_locations must be a floating-point tensor, got ", dtype_str(loc.scalar_type()));
  DETREX_MSDA_CHECK(loc.is_contiguous(), op,
                    ": sampling_locations must be contiguous (call .contiguous()), got strides ",
                    tuple_str(loc.strides()));

  const at::IntArrayRef expected_w = loc.sizes().slice(0, 5);
  DETREX_MSDA_CHECK(attw.sizes() == expected_w, op, ": attention_weights must be (B, Q, M, L, P) = ",
                    tuple_str(expected_w), " to match sampling_locations, got ", tuple_str(attw.sizes()));
  DETREX_MSDA_CHECK(at::isFloatingType(attw.scalar_type()), op,
                    ": attention_weights must be a floating-point tensor, got ", dtype_str(attw.scalar_type()));
  DETREX_MSDA_CHECK(attw.is_contiguous(), op,
                    ": attention_weights must be contiguous (call .contiguous()), got strides ",
                    tuple_str(attw.strides()));

  const int64_t L = loc.size(3);
  DETREX_MSDA_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == L && spatial_shapes.size(1) == 2, op,
                    ": spatial_shapes must be (L, 2) = (", L, ", 2) holding (H_l, W_l), got ",
                    tuple_str(spatial_shapes.sizes()));
  DETREX_MSDA_CHECK(integer_dtype(spatial_shapes.scalar_type()), op,
                    ": spatial_shapes must be an integer tensor, got ", dtype_str(spatial_shapes.scalar_type()));
  DETREX_MSDA_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, op,
                    ": level_start_index must be (L,) = (", L, ",), got ", tuple_str(level_start_index.sizes()));
  DETREX_MSDA_CHECK(integer_dtype(level_start_index.scalar_type()), op,
                    ": level_start_index must be an integer tensor, got ",
                    dtype_str(level_start_index.scalar_type()));
  DETREX_MSDA_CHECK(im2col_step > 0, op, ": im2col_step must be positive, got ", im2col_step);
  DETREX_MSDA_CHECK(value.size(1) <= INT32_MAX && value.size(3) <= INT32_MAX && loc.size(1) <= INT32_MAX &&
                        L * loc.size(4) <= INT32_MAX,
                    op, ": sizes beyond 2^31 are not supported, got value ", tuple_str(value.sizes()),
                    " and sampling_locations ", tuple_str(loc.sizes()));
}

// grad_output of the backward: shape and dtype.
void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& value,
                       const at::Tensor& sampling_locations) {
  const int64_t B = value.size(0), Q = sampling_locations.size(1), MD = value.size(2) * value.size(3);
  DETREX_MSDA_CHECK(grad_output.dim() == 3 && grad_output.size(0) == B && grad_output.size(1) == Q &&
                        grad_output.size(2) == MD,
                    op, ": grad_output must be (B, Q, M * D) = (", B, ", ", Q, ", ", MD, "), got ",
                    tuple_str(grad_output.sizes()));
  DETREX_MSDA_CHECK(at::isFloatingType(grad_output.scalar_type()), op,
                    ": grad_output must be a floating-point tensor, got ", dtype_str(grad_output.scalar_type()));
}

// Devices, last: value on a CUDA device, the rest beside it (shapes and start indices may also be on the CPU).
void check_devices(const char* op, const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, const at::Tensor* grad_output) {
  DETREX_MSDA_CHECK(value.is_cuda(), op, ": value must be a CUDA tensor, got device ", device_str(value),
                    " (the pure-PyTorch op serves other devices)");
  DETREX_MSDA_CHECK(sampling_locations.device() == value.device(), op,
                    ": sampling_locations must be on value's device ", device_str(value), ", got ",
                    device_str(sampling_locations));
  DETREX_MSDA_CHECK(attention_weights.device() == value.device(), op,
                    ": attention_weights must be on value's device ", device_str(value), ", got ",
                    device_str(attention_weights));
  DETREX_MSDA_CHECK(spatial_shapes.is_cpu() || spatial_shapes.device() == value.device(), op,
                    ": spatial_shapes must be on value's device ", device_str(value), " or on the CPU, got ",
                    device_str(spatial_shapes));
  DETREX_MSDA_CHECK(level_start_index.is_cpu() || level_start_index.device() == value.device(), op,
                    ": level_start_index must be on value's device ", device_str(value), " or on the CPU, got ",
                    device_str(level_start_index));
  if (grad_output != nullptr) {
    DETREX_MSDA_CHECK(grad_output->device() == value.device(), op, ": grad_output must be on value's device ",
                      device_str(value), ", got ", device_str(*grad_output));
  }
}

void check_variant(const char* op, int64_t variant) {
  DETREX_MSDA_CHECK(is_backward_variant(variant), op,
                    ": variant must be 0-5 or 10-14 (detrex.layers.msda_op.BACKWARD_VARIANTS), got ", variant);
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

// ------------------------------------------------------------------------------------------------------------------
// CUDA kernels
// ------------------------------------------------------------------------------------------------------------------
at::Tensor ms_deform_attn_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, int64_t im2col_step) {
  const char* op = "ms_deform_attn";
  check_tensors(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step);
  check_devices(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, nullptr);
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
    int64_t im2col_step, int64_t variant) {
  const char* op = "ms_deform_attn_backward";
  check_tensors(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step);
  check_grad_output(op, grad_output, value, sampling_locations);
  check_variant(op, variant);
  check_devices(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, &grad_output);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto loc_type = location_dtype(value, sampling_locations, attention_weights);
  const at::Tensor loc = sampling_locations.to(loc_type);
  const at::Tensor attw = attention_weights.to(loc_type);
  const at::Tensor shapes = as_long(spatial_shapes, value.device());
  const at::Tensor starts = as_long(level_start_index, value.device());
  const at::Tensor gout = grad_output.to(value.scalar_type()).contiguous();  // autograd may hand a strided grad

  at::Tensor grad_loc = at::empty(loc.sizes(), loc.options());
  at::Tensor grad_attw = at::empty(attw.sizes(), attw.options());
  at::Tensor grad_value = backward_cuda(gout, value, shapes, starts, loc, attw, grad_loc, grad_attw, variant);
  return {grad_value, grad_loc.to(sampling_locations.scalar_type()), grad_attw.to(attention_weights.scalar_type())};
}

// ------------------------------------------------------------------------------------------------------------------
// CPU kernels: the same checks, then the device refusal the CUDA kernels give for a CPU value
// ------------------------------------------------------------------------------------------------------------------
at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights, int64_t im2col_step) {
  const char* op = "ms_deform_attn";
  check_tensors(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step);
  check_devices(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, nullptr);
  fail(cat(op, ": no CPU kernel (the pure-PyTorch op serves CPU tensors)"));  // not reached: value is not on CUDA
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    int64_t im2col_step, int64_t variant) {
  const char* op = "ms_deform_attn_backward";
  check_tensors(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step);
  check_grad_output(op, grad_output, value, sampling_locations);
  check_variant(op, variant);
  check_devices(op, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, &grad_output);
  fail(cat(op, ": no CPU kernel (the pure-PyTorch op serves CPU tensors)"));  // not reached
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
      "Tensor sampling_locations, Tensor attention_weights, int im2col_step=64, int variant=0) "
      "-> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detrex, CUDA, m) {
  m.impl("ms_deform_attn", &detrex::msda::ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &detrex::msda::ms_deform_attn_backward_cuda);
}

TORCH_LIBRARY_IMPL(detrex, CPU, m) {
  m.impl("ms_deform_attn", &detrex::msda::ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &detrex::msda::ms_deform_attn_backward_cpu);
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
    "detrex compiled ops: registers torch.ops.detrex.ms_deform_attn (CUDA; CPU input checks) on import.",
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
