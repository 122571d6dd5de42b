// Convolution weight gradient on x86-64 CPUs (AVX2 + FMA), as an XLA FFI
// custom call. Built and loaded by attn_contrastive/ops/native.py.
//
// Why by hand: XLA:CPU has no fast kernel for the weight gradient of a
// convolution over few channels. Its own (a convolution with the batch as
// the contraction) and the im2col + matmul formulation of conv.py both
// stream the patches through memory and are several times slower there than
// PyTorch's oneDNN kernel (see benchmarks/README.md), which jaxlib contains
// but does not use for convolutions here. This kernel never materialises
// patches: for each block of output pixels it keeps a 4x16 tile of dW in
// registers and adds the rank-1 products
// x[pixel + tap, c0:c0+4] * g[pixel, o0:o0+16] of the whole block.
//
//   dw[i, j, c, o] = sum_{n, p, q} x[n, p*sh + i, q*sw + j, c] * g[n, p, q, o]
//
// x is the padded NHWC input (the caller pads/crops so that every window is
// inside it), g the NHWC output gradient, dw HWIO. Requires C % 4 == 0 and
// O % 16 == 0 (the caller checks). Images are split over `threads` threads,
// each with its own partial sum, added at the end; block sums are added to
// the result once per block, which keeps the rounding error of long sums
// near that of a pairwise sum.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t n, hp, wp, c, ho, wo, o, kh, kw, sh, sw;
};

// Output pixels per block (rows of one image, or several whole small
// images): enough to amortise the tile's read-modify-write of dw; 64 was
// faster than 256 and 1024 on every ResNet shape measured.
constexpr int64_t kBlockPixels = 64;

inline void AddTo(float* d, __m256 lo, __m256 hi) {
  _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), lo));
  _mm256_storeu_ps(d + 8, _mm256_add_ps(_mm256_loadu_ps(d + 8), hi));
}

// A block of output pixels: rows [p0, p1) of images [n0, n1).
struct Block {
  int64_t n0, n1, p0, p1;
};

// dw[tap, c0:c0+4, o0:o0+16] += the block's sum.
inline void Tile(const float* x, const float* g, float* dw, const Shape& s,
                 const Block& blk, int64_t i, int64_t j, int64_t c0,
                 int64_t o0) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
  __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  for (int64_t n = blk.n0; n < blk.n1; ++n) {
    for (int64_t p = blk.p0; p < blk.p1; ++p) {
      const float* gr = g + (n * s.ho + p) * s.wo * s.o + o0;
      const float* xr = x + ((n * s.hp + p * s.sh + i) * s.wp + j) * s.c + c0;
      for (int64_t q = 0; q < s.wo; ++q) {
        const float* gq = gr + q * s.o;
        const float* xq = xr + q * s.sw * s.c;
        const __m256 g0 = _mm256_loadu_ps(gq), g1 = _mm256_loadu_ps(gq + 8);
        __m256 b = _mm256_broadcast_ss(xq);
        a00 = _mm256_fmadd_ps(b, g0, a00);
        a01 = _mm256_fmadd_ps(b, g1, a01);
        b = _mm256_broadcast_ss(xq + 1);
        a10 = _mm256_fmadd_ps(b, g0, a10);
        a11 = _mm256_fmadd_ps(b, g1, a11);
        b = _mm256_broadcast_ss(xq + 2);
        a20 = _mm256_fmadd_ps(b, g0, a20);
        a21 = _mm256_fmadd_ps(b, g1, a21);
        b = _mm256_broadcast_ss(xq + 3);
        a30 = _mm256_fmadd_ps(b, g0, a30);
        a31 = _mm256_fmadd_ps(b, g1, a31);
      }
    }
  }
  float* d = dw + ((i * s.kw + j) * s.c + c0) * s.o + o0;
  AddTo(d, a00, a01);
  AddTo(d + s.o, a10, a11);
  AddTo(d + 2 * s.o, a20, a21);
  AddTo(d + 3 * s.o, a30, a31);
}

// Adds the weight gradient of images [n0, n1) to dw, one block of about
// kBlockPixels output pixels at a time (whole images when they are smaller,
// so that deep layers' 4x4 or 2x2 maps still make long blocks).
void Images(const float* x, const float* g, float* dw, const Shape& s,
            int64_t n0, int64_t n1) {
  const int64_t pixels = s.ho * s.wo;
  const int64_t rows = std::max<int64_t>(1, kBlockPixels / s.wo);
  const int64_t images = std::max<int64_t>(1, kBlockPixels / pixels);
  std::vector<Block> blocks;
  for (int64_t n = n0; n < n1; n += (pixels >= kBlockPixels ? 1 : images)) {
    if (pixels >= kBlockPixels) {
      for (int64_t p0 = 0; p0 < s.ho; p0 += rows)
        blocks.push_back({n, n + 1, p0, std::min(s.ho, p0 + rows)});
    } else {
      blocks.push_back({n, std::min(n1, n + images), 0, s.ho});
    }
  }
  for (const Block& blk : blocks)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j)
        for (int64_t c0 = 0; c0 < s.c; c0 += 4)
          for (int64_t o0 = 0; o0 < s.o; o0 += 16)
            Tile(x, g, dw, s, blk, i, j, c0, o0);
}

ffi::Error WeightGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::ResultBuffer<ffi::F32> dw, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t threads) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("conv_wgrad: rank-4 operands expected");
  const Shape s{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2],
                gd[3], kh,    kw,    sh,    sw};
  if (gd[0] != s.n || s.c % 4 != 0 || s.o % 16 != 0 || wd[0] != kh ||
      wd[1] != kw || wd[2] != s.c || wd[3] != s.o ||
      (s.ho - 1) * sh + kh > s.hp || (s.wo - 1) * sw + kw > s.wp)
    return ffi::Error::InvalidArgument("conv_wgrad: inconsistent shapes");
  const int64_t size = kh * kw * s.c * s.o;
  float* out = dw->typed_data();
  std::memset(out, 0, size * sizeof(float));
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, s.n));
  std::vector<std::vector<float>> parts(t - 1, std::vector<float>(size, 0.f));
  std::vector<std::thread> workers;
  for (int64_t k = 1; k < t; ++k)
    workers.emplace_back([&, k] {
      Images(x.typed_data(), g.typed_data(), parts[k - 1].data(), s,
             s.n * k / t, s.n * (k + 1) / t);
    });
  Images(x.typed_data(), g.typed_data(), out, s, 0, s.n / t);
  for (auto& w : workers) w.join();
  for (const auto& part : parts)
    for (int64_t e = 0; e < size; ++e) out[e] += part[e];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttnContrastiveConvWgradF32, WeightGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("threads"));
