// A 2-D convolution, or its transpose, for XLA:CPU through oneDNN, called from JAX as an FFI
// custom call (vqgan_flax/cpu_kernels.py builds and registers it). The transpose serves
// nearest-neighbour x2 upsampling followed by a 3x3 conv, which equals a stride-2 transposed
// 4x4 conv with summed weights at 16/36 of the multiply-adds (cpu_kernels.upsample_conv).
//
// Why: XLA:CPU lowers convolutions to Eigen contractions, which trail oneDNN's JIT kernels in
// float32 and do not use AMX or avx512_bf16 for bfloat16 at all; PyTorch runs oneDNN. Layouts
// are JAX's own (NHWC activations, HWIO kernels), so nothing is transposed on either side of the
// call; only the kernel is reordered into oneDNN's blocked layout, once per call (weights can
// change between calls, and the reorder costs well under 1% of the convolution).
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

// A convolution compiled for one set of shapes, dtypes, strides and pads. oneDNN primitives are
// immutable after creation and may execute concurrently on different buffers, but only with a
// scratchpad of their own per call: the library's default scratchpad is one global buffer, and
// XLA runs independent ops (attention's q/k/v, or one per device) on several threads at once.
struct Plan {
  memory::desc src, weights, bias, dst, scratchpad;
  dnnl::primitive compute;
  dnnl::reorder::primitive_desc reorder_pd;
  dnnl::reorder weights_reorder;
  memory::desc user_weights;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::data_type ToDnnl(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32:
      return memory::data_type::f32;
    case ffi::DataType::BF16:
      return memory::data_type::bf16;
    default:
      return memory::data_type::undef;
  }
}

template <typename Primitive>
std::shared_ptr<Plan> MakePlan(dnnl::algorithm algorithm, const memory::desc& src, const memory::desc& weights_any,
                               const memory::desc& bias, const memory::desc& dst, const memory::desc& user_weights,
                               const memory::dims& strides, const memory::dims& pad_l, const memory::dims& pad_r,
                               bool add_to_output) {
  auto& engine = Engine();
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (add_to_output) {  // dst = conv(src) + bias + dst: a residual connection in the same pass
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  typename Primitive::primitive_desc pd(engine, dnnl::prop_kind::forward_inference, algorithm, src, weights_any, bias,
                                        dst, strides, pad_l, pad_r, attr);
  dnnl::primitive_attr reorder_attr;
  reorder_attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::reorder::primitive_desc reorder_pd(engine, user_weights, engine, pd.weights_desc(), reorder_attr);
  return std::make_shared<Plan>(Plan{pd.src_desc(), pd.weights_desc(), pd.bias_desc(), pd.dst_desc(),
                                     pd.scratchpad_desc(), Primitive(pd), reorder_pd, dnnl::reorder(reorder_pd),
                                     user_weights});
}

std::shared_ptr<Plan> GetPlan(const std::string& key, bool transposed, memory::dims src_dims, memory::dims wts_dims,
                              memory::dims dst_dims, memory::data_type dt, memory::data_type bias_dt, bool has_bias,
                              memory::dims strides, memory::dims pad_l, memory::dims pad_r, bool add_to_output) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  memory::desc src(src_dims, dt, memory::format_tag::nhwc);
  memory::desc dst(dst_dims, dt, memory::format_tag::nhwc);
  memory::desc weights_any(wts_dims, dt, memory::format_tag::any);
  memory::desc user_weights(wts_dims, dt, memory::format_tag::hwio);
  // A zero memory descriptor tells oneDNN there is no bias.
  memory::desc bias = has_bias ? memory::desc({wts_dims[0]}, bias_dt, memory::format_tag::a) : memory::desc();
  auto plan = transposed ? MakePlan<dnnl::deconvolution_forward>(dnnl::algorithm::deconvolution_direct, src,
                                                                  weights_any, bias, dst, user_weights, strides,
                                                                  pad_l, pad_r, add_to_output)
                         : MakePlan<dnnl::convolution_forward>(dnnl::algorithm::convolution_direct, src, weights_any,
                                                                bias, dst, user_weights, strides, pad_l, pad_r,
                                                                add_to_output);
  std::lock_guard<std::mutex> lock(mutex);
  return plans.emplace(key, plan).first->second;
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "vqgan_onednn_conv: " + what);
}

}  // namespace

static ffi::Error ConvImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::AnyBuffer residual,
                           ffi::Result<ffi::AnyBuffer> y,
                           int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                           int64_t pad_left, int64_t pad_right, bool transposed) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4) return Invalid("expected NHWC input, HWIO kernel and output");
  if (wd[2] != xd[3] || yd[0] != xd[0] || yd[3] != wd[3]) return Invalid("kernel or output shape does not fit the input");
  // The output size oneDNN will compute must be the one XLA allocated.
  const int64_t span_h = xd[1] + pad_top + pad_bottom, span_w = xd[2] + pad_left + pad_right;
  const int64_t out_h = transposed ? (xd[1] - 1) * stride_h - pad_top - pad_bottom + wd[0]
                                   : (span_h < wd[0] ? -1 : (span_h - wd[0]) / stride_h + 1);
  const int64_t out_w = transposed ? (xd[2] - 1) * stride_w - pad_left - pad_right + wd[1]
                                   : (span_w < wd[1] ? -1 : (span_w - wd[1]) / stride_w + 1);
  if (stride_h < 1 || stride_w < 1 || out_h != yd[1] || out_w != yd[2])
    return Invalid("output height/width do not follow from the input, kernel, strides and pads");
  const bool has_bias = b.element_count() > 0, add_residual = residual.element_count() > 0;
  if (add_residual && (residual.element_type() != y->element_type() || residual.element_count() != y->element_count()))
    return Invalid("residual must have the output's shape and dtype");
  if (has_bias && (b.dimensions().size() != 1 || b.dimensions()[0] != wd[3])) return Invalid("bias is not (out_channels,)");
  const auto dt = ToDnnl(x.element_type());
  const auto bias_dt = has_bias ? ToDnnl(b.element_type()) : dt;
  if (dt == memory::data_type::undef || ToDnnl(w.element_type()) != dt || ToDnnl(y->element_type()) != dt ||
      bias_dt == memory::data_type::undef)
    return Invalid("input, kernel and output must all be float32 or all bfloat16");
  const memory::dims src_dims{xd[0], xd[3], xd[1], xd[2]}, wts_dims{wd[3], wd[2], wd[0], wd[1]},
      dst_dims{yd[0], yd[3], yd[1], yd[2]}, strides{stride_h, stride_w}, pad_l{pad_top, pad_left},
      pad_r{pad_bottom, pad_right};
  std::string key;
  for (auto v : {xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], stride_h, stride_w, pad_top,
                 pad_bottom, pad_left, pad_right, int64_t(dt), int64_t(bias_dt), int64_t(has_bias), int64_t(transposed),
                 int64_t(add_residual)})
    key += std::to_string(v) + ",";
  try {
    auto plan = GetPlan(key, transposed, src_dims, wts_dims, dst_dims, dt, bias_dt, has_bias, strides, pad_l, pad_r,
                        add_residual);
    // The residual operand is aliased to the output (input_output_aliases); should XLA have given
    // them separate buffers, start the output from the residual's values.
    if (add_residual && residual.untyped_data() != y->untyped_data())
      std::memcpy(y->untyped_data(), residual.untyped_data(), residual.size_bytes());
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory user_weights(plan->user_weights, engine, w.untyped_data());
    memory weights(plan->weights, engine);
    plan->weights_reorder.execute(stream, {{DNNL_ARG_FROM, user_weights}, {DNNL_ARG_TO, weights},
                                           {DNNL_ARG_SCRATCHPAD, memory(plan->reorder_pd.scratchpad_desc(), engine)}});
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(plan->src, engine, x.untyped_data())},
                                         {DNNL_ARG_WEIGHTS, weights},
                                         {DNNL_ARG_DST, memory(plan->dst, engine, y->untyped_data())},
                                         {DNNL_ARG_SCRATCHPAD, memory(plan->scratchpad, engine)}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, memory(plan->bias, engine, b.untyped_data()));
    plan->compute.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("vqgan_onednn_conv: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VqganOnednnConv, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // input, NHWC
                                  .Arg<ffi::AnyBuffer>()  // kernel, HWIO
                                  .Arg<ffi::AnyBuffer>()  // bias (out_channels,), or empty for none
                                  .Arg<ffi::AnyBuffer>()  // residual added to the output (aliased to it), or empty
                                  .Ret<ffi::AnyBuffer>()  // output, NHWC
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<bool>("transposed"));
