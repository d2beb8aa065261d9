// Counter-based Gumbel noise shared by the CPU and CUDA kernels (host and device code).
//
// Stream definition (the Python reference and the Triton kernels reproduce it exactly):
//  * Philox4x32-10, key (k0, k1) = (seed & 0xffffffff, seed >> 32), the key raised by
//    (0x9E3779B9, 0xBB67AE85) after every round: the function `triton.language.philox`.
//  * Element e (its position in the row-major (rows, vocab) layout) belongs to the counter
//    group e >> 2 and takes output word e & 3 of the block with counter
//    (group & 0xffffffff, group >> 32, offset & 0xffffffff, offset >> 32).
//  * u = (r + 0.5) * 2^-32 in (0, 1), g = -log(-log(u)) evaluated in float64 and rounded
//    once to float32. Any two float64 logs accurate to about an ulp then give the same
//    float32 except when the double rounding straddles a float32 boundary, which happens
//    for about one element in 10^9.
#pragma once
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SEMID_FAST_HD __host__ __device__ __forceinline__
#else
#define SEMID_FAST_HD inline
#endif

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

SEMID_FAST_HD uint64_t bits_of(double x) {
#ifdef __CUDA_ARCH__
  return uint64_t(__double_as_longlong(x));
#else
  uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

SEMID_FAST_HD double double_of(uint64_t b) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(b));
#else
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Natural log of a positive normal double, within about one ulp, without branches (so that
// CPU loops vectorise). x = 2^k * m with m in [sqrt(1/2), sqrt(2)); log(m) = log(1 + f) from
// s = f / (2 + f) and the minimax polynomial of fdlibm's __ieee754_log (its Lg1..Lg7).
SEMID_FAST_HD double log_positive(double x) {
  const uint64_t bits = bits_of(x);
  const uint64_t shifted = bits - 0x3FE6A09E667F3BCDull;  // bits of sqrt(1/2)
  const int32_t k = int32_t(uint32_t(shifted >> 32)) >> 20;
  const double m = double_of(bits - (uint64_t(int64_t(k)) << 52));
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  const double r =
      z * (6.666666666666735130e-01 +
           z * (3.999999999940941908e-01 +
                z * (2.857142874366239149e-01 +
                     z * (2.222219843214978396e-01 +
                          z * (1.818357216161805012e-01 +
                               z * (1.531383769920937332e-01 + z * 1.479819860511658591e-01))))));
  const double half_f2 = 0.5 * f * f;
  const double dk = double(k);
  return dk * 6.93147180369123816490e-01 -
         ((half_f2 - (s * (half_f2 + r) + dk * 1.90821492927058770002e-10)) - f);
}

// g = -log(-log(u)), u = (r + 0.5) / 2^32: never infinite (|g| < 23).
SEMID_FAST_HD float gumbel_of_bits(uint32_t r) {
  const double u = (double(r) + 0.5) * 2.3283064365386962890625e-10;
  return float(-log_positive(-log_positive(u)));
}

}  // namespace philox
}  // namespace semid_fast
