// GroupNorm (+ swish) over NHWC for XLA:CPU, called from JAX as an FFI custom call
// (vqgan_flax/cpu_kernels.py builds and registers it).
//
// Why: XLA:CPU runs flax's GroupNorm as several reductions over a (N, H*W, G, C/G) view that it
// does not vectorize well, then casts and swish as further passes; on bf16 models the GroupNorms
// took about half of the decoder. Here it is three streaming passes over the pixels (channel sums,
// squared deviations from the group mean, then scale/shift/swish written out), threads over rows.
// Statistics are as flax's two-pass float32 ones (accumulated in double, so the order of summation
// does not matter); inputs and outputs may each be float32 or bfloat16.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline float Bf16ToF32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToBf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// exp for the sigmoid, written so the compiler vectorizes it (a libm call or floor() would not
// be): Cephes' range reduction and polynomial, about 1 ulp on [-87, 88]; inputs are clamped to
// that range. Adding and removing 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
inline float ExpApprox(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // NaN passes through
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  return e * __builtin_bit_cast(float, (int32_t(n) + 127) << 23);
}

template <typename In>
inline float Load(const In* p, int64_t i) {
  if constexpr (sizeof(In) == 2) return Bf16ToF32(p[i]); else return p[i];
}

// Per-channel sums of (x - center[c]) and, in the second pass, of its square, over `rows` rows
// of `channels` values. Threads take blocks of rows; within a block the sums are float (short
// runs, vectorized), added into double per block, so long images lose nothing to rounding.
template <typename In, bool kSquare>
__attribute__((target_clones("avx512f", "avx2", "default")))
void ChannelSums(const In* __restrict x, int64_t rows, int64_t channels, const float* __restrict center,
                 double* __restrict out) {
  constexpr int64_t kBlock = 64;
  std::fill(out, out + channels, 0.0);
#pragma omp parallel
  {
    std::vector<double> total(channels, 0.0);
    std::vector<float> block(channels);
    float* __restrict acc = block.data();
#pragma omp for schedule(static)
    for (int64_t start = 0; start < rows; start += kBlock) {
      std::fill(acc, acc + channels, 0.0f);
      const int64_t stop = std::min(rows, start + kBlock);
      for (int64_t r = start; r < stop; ++r) {
        const In* __restrict row = x + r * channels;
        for (int64_t c = 0; c < channels; ++c) {
          const float d = Load(row, c) - center[c];
          acc[c] += kSquare ? d * d : d;
        }
      }
      for (int64_t c = 0; c < channels; ++c) total[c] += acc[c];
    }
#pragma omp critical
    for (int64_t c = 0; c < channels; ++c) out[c] += total[c];
  }
}

template <typename In, typename Out, bool kSwish>
__attribute__((target_clones("avx512f", "avx2", "default")))
void ScaleShift(const In* __restrict x, Out* __restrict y, int64_t rows, int64_t channels, const float* __restrict a,
                const float* __restrict b) {
#pragma omp parallel
  {
    std::vector<float> buffer(channels);
    float* __restrict v = buffer.data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const In* __restrict row = x + r * channels;
      for (int64_t c = 0; c < channels; ++c) v[c] = Load(row, c) * a[c] + b[c];
      if constexpr (kSwish)
        for (int64_t c = 0; c < channels; ++c) v[c] = v[c] / (1.0f + ExpApprox(-v[c]));
      Out* __restrict out = y + r * channels;
      if constexpr (sizeof(Out) == 2) {
        for (int64_t c = 0; c < channels; ++c) out[c] = F32ToBf16(v[c]);
      } else {
        for (int64_t c = 0; c < channels; ++c) out[c] = v[c];
      }
    }
  }
}

template <typename In, typename Out>
void GroupNorm(const In* x, Out* y, const float* gamma, const float* beta, int64_t n, int64_t rows,
               int64_t channels, int64_t groups, float epsilon, bool swish) {
  const int64_t per_group = channels / groups;
  std::vector<float> center(channels), a(channels), b(channels), zeros(channels, 0.0f);
  std::vector<double> sums(channels);
  for (int64_t i = 0; i < n; ++i) {
    const In* xi = x + i * rows * channels;
    ChannelSums<In, false>(xi, rows, channels, zeros.data(), sums.data());
    std::vector<float> mean(groups);
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) s += sums[c];
      mean[g] = float(s / double(rows * per_group));
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) center[c] = mean[g];
    }
    ChannelSums<In, true>(xi, rows, channels, center.data(), sums.data());
    for (int64_t g = 0; g < groups; ++g) {
      double s = 0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) s += sums[c];
      const float rstd = 1.0f / std::sqrt(float(s / double(rows * per_group)) + epsilon);
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        a[c] = rstd * gamma[c];
        b[c] = beta[c] - mean[g] * a[c];
      }
    }
    if (swish)
      ScaleShift<In, Out, true>(xi, y + i * rows * channels, rows, channels, a.data(), b.data());
    else
      ScaleShift<In, Out, false>(xi, y + i * rows * channels, rows, channels, a.data(), b.data());
  }
}

}  // namespace

static ffi::Error GroupNormImpl(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> beta,
                                ffi::Result<ffi::AnyBuffer> y, int64_t groups, float epsilon, bool swish) {
  auto dims = x.dimensions();
  if (dims.size() != 4) return ffi::Error(ffi::ErrorCode::kInvalidArgument, "vqgan_group_norm: expected NHWC input");
  const int64_t n = dims[0], rows = dims[1] * dims[2], channels = dims[3];
  if (groups <= 0 || channels % groups != 0 || gamma.element_count() != size_t(channels) ||
      beta.element_count() != size_t(channels) || y->element_count() != x.element_count())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "vqgan_group_norm: channels " + std::to_string(channels) + " do not fit groups " +
                          std::to_string(groups) + ", scale, bias or output");
  const auto in = x.element_type(), out = y->element_type();
  const float* g = gamma.typed_data();
  const float* b = beta.typed_data();
  using ffi::DataType;
  if (in == DataType::F32 && out == DataType::F32)
    GroupNorm(static_cast<const float*>(x.untyped_data()), static_cast<float*>(y->untyped_data()), g, b, n, rows,
              channels, groups, epsilon, swish);
  else if (in == DataType::BF16 && out == DataType::BF16)
    GroupNorm(static_cast<const uint16_t*>(x.untyped_data()), static_cast<uint16_t*>(y->untyped_data()), g, b, n,
              rows, channels, groups, epsilon, swish);
  else if (in == DataType::F32 && out == DataType::BF16)
    GroupNorm(static_cast<const float*>(x.untyped_data()), static_cast<uint16_t*>(y->untyped_data()), g, b, n, rows,
              channels, groups, epsilon, swish);
  else if (in == DataType::BF16 && out == DataType::F32)
    GroupNorm(static_cast<const uint16_t*>(x.untyped_data()), static_cast<float*>(y->untyped_data()), g, b, n, rows,
              channels, groups, epsilon, swish);
  else
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "vqgan_group_norm: input and output must be float32 or bfloat16");
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VqganGroupNorm, GroupNormImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()          // input, NHWC
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale (C,)
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias (C,)
                                  .Ret<ffi::AnyBuffer>()          // output, NHWC
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("swish"));
