// Counter-based Gumbel noise shared by the CPU and CUDA kernels (host and device code).
//
// Stream definition (the Python reference and the Triton kernels reproduce it exactly):
//  * Philox4x32-10, key (k0, k1) = (seed & 0xffffffff, seed >> 32), the key raised by
//    (0x9E3779B9, 0xBB67AE85) after every round: the function `triton.language.philox`.
//  * Element e (its position in the row-major (rows, vocab) layout) belongs to the counter
//    group e >> 2 and takes output word e & 3 of the block with counter
//    (group & 0xffffffff, group >> 32, offset & 0xffffffff, offset >> 32).
//  * u = (2 (r >> 9) + 1) * 2^-24 (exact in float32) and g = -log(-log(u)) with the log of
//    log_positive below: float32 +, - and * only, each rounded once in a fixed order. Every
//    IEEE backend computes the same bits, so the noise agrees bit for bit everywhere (the
//    reference spells the same operations out in torch). The price: u takes 2^23 values,
//    so |g| < 17 (the Gumbel mass beyond is about 1e-7), and the log is within ~1 ulp, not
//    correctly rounded -- immaterial for sampling.
#pragma once
#include <cstdint>
#include <cstring>

#include "semid_fast/host_device.h"

namespace semid_fast {
namespace philox {

constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;

// Ten Philox rounds on the counter (c0..c3) in place.
SEMID_FAST_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3,
                                 uint32_t k0, uint32_t k1) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kRoundB) * c2;
    const uint64_t p2 = uint64_t(kRoundA) * c0;
    const uint32_t n0 = uint32_t(p0 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = uint32_t(p2 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p0);
    c3 = uint32_t(p2);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
}

// The four words of counter group `group` (elements 4*group .. 4*group+3).
SEMID_FAST_HD void group_bits(uint64_t seed, uint64_t offset, uint64_t group, uint32_t out[4]) {
  uint32_t c0 = uint32_t(group), c1 = uint32_t(group >> 32);
  uint32_t c2 = uint32_t(offset), c3 = uint32_t(offset >> 32);
  philox4x32_10(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

SEMID_FAST_HD uint32_t bits_of(float x) {
#ifdef __CUDA_ARCH__
  return uint32_t(__float_as_int(x));
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

SEMID_FAST_HD float float_of(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __int_as_float(int(b));
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Single IEEE float operations, never contracted into an FMA (host code: this header is
// compiled with -ffp-contract=off, see CMakeLists.txt; device code: the _rn intrinsics).
SEMID_FAST_HD float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
SEMID_FAST_HD float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SEMID_FAST_HD float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// The perturbed logit z = (x + scale * g) / tau, each operation rounded once, as every
// backend (and the reference) computes it: argmax and top-k indices agree exactly.
SEMID_FAST_HD float perturb(float x, float scale, float g, float tau) {
  return div(add(x, mul(scale, g)), tau);
}

// Natural log of a positive normal float from +, - and * alone, in a fixed order, so that
// every IEEE backend (and torch, op by op) gets the same bits. x = 2^k * m with m in
// [sqrt(1/2), sqrt(2)); log(m) = log(1 + f) by the minimax polynomial of Cephes' logf
// (within about 1 ulp); k * ln 2 is added as 0.693359375 k (exact) - 2.12194440e-4 k.
SEMID_FAST_HD float log_positive(float x) {
  const uint32_t bits = bits_of(x);
  const int32_t k = int32_t(bits - 0x3F3504F3u) >> 23;  // 0x3F3504F3: sqrt(1/2)
  const float m = float_of(uint32_t(int32_t(bits) - k * 8388608));
  const float f = add(m, -1.f);
  const float z = mul(f, f);
  float p = 7.0376836292e-2f;
  p = add(mul(p, f), -1.1514610310e-1f);
  p = add(mul(p, f), 1.1676998740e-1f);
  p = add(mul(p, f), -1.2420140846e-1f);
  p = add(mul(p, f), 1.4249322787e-1f);
  p = add(mul(p, f), -1.6668057665e-1f);
  p = add(mul(p, f), 2.0000714765e-1f);
  p = add(mul(p, f), -2.4999993993e-1f);
  p = add(mul(p, f), 3.3333331174e-1f);
  const float kf = float(k);
  float y = mul(mul(p, f), z);
  y = add(y, mul(kf, -2.12194440e-4f));
  y = add(y, -mul(0.5f, z));
  return add(add(f, y), mul(kf, 0.693359375f));
}

// u = (2 (r >> 9) + 1) / 2^24: exact in float32, in [2^-24, 1 - 2^-24], symmetric.
SEMID_FAST_HD float uniform_of_bits(uint32_t r) {
  return mul(float(int32_t((r >> 9) * 2u + 1u)), 5.9604644775390625e-08f);
}

// g = -log(-log(u)), |g| < 17.
SEMID_FAST_HD float gumbel_of_bits(uint32_t r) {
  return -log_positive(-log_positive(uniform_of_bits(r)));
}

}  // namespace philox
}  // namespace semid_fast
