// pybind11 module _C: argument passing only (kernel_binding.h), plus the kernels' limits.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <utility>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernel_binding.h"
#include "semid_fast/gumbel.h"
#include "semid_fast/kmeans.h"
#include "semid_fast/longid.h"
#include "semid_fast/quantize.h"
#include "semid_fast/trie.h"
#include "semid_fast/trie_hf.h"


namespace {

// The widest kernels this CPU runs: 0 baseline, 1 AVX2+FMA, 2 AVX-512 (F, VL, BW, DQ; the
// quantize, k-means and holistic kernels, the others running AVX2). SEMID_FAST_CPU_ISA=baseline|avx2
// caps it (so that tests cover every build); unknown values change nothing.
int isa_level() {
  static const int level = [] {
    int best = 0;
#if SEMID_FAST_HAS_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
#endif
#if SEMID_FAST_HAS_AVX512
    if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      best = 2;
#endif
    const char* forced = std::getenv("SEMID_FAST_CPU_ISA");
    const std::string cap = forced ? forced : "";
    if (cap == "baseline") return 0;
    if (cap == "avx2") return std::min(best, 1);
    return best;
  }();
  return level;
}
bool use_avx2() { return isa_level() >= 1; }
bool use_avx512() { return isa_level() >= 2; }

// Binds semid_fast::<isa>::NAME under the same name, picking the ISA at each call.
#if SEMID_FAST_HAS_AVX2
#define SEMID_FAST_KERNEL(m, name)                                                       \
  semid_fast::bind::def_kernel(m, #name, &semid_fast::isa_avx2::name,                    \
                               &semid_fast::isa_base::name, use_avx2)
#else
#define SEMID_FAST_KERNEL(m, name)                                                       \
  semid_fast::bind::def_kernel(m, #name, &semid_fast::isa_base::name,                    \
                               &semid_fast::isa_base::name, use_avx2)
#endif
// The same for the kernels that also have an AVX-512 build (quantize, k-means, holistic).
#if SEMID_FAST_HAS_AVX512
#define SEMID_FAST_KERNEL_512(m, name)                                                   \
  semid_fast::bind::def_kernel3(m, #name, &semid_fast::isa_avx512::name,                 \
                                &semid_fast::isa_avx2::name, &semid_fast::isa_base::name, \
                                use_avx512, use_avx2)
#else
#define SEMID_FAST_KERNEL_512(m, name) SEMID_FAST_KERNEL(m, name)
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "semid_fast CPU kernels (raw pointers, no torch dependency)";
  m.def("isa", [] { return use_avx512() ? "avx512" : use_avx2() ? "avx2" : "baseline"; });
  // Asks Linux to back the whole pages of [p, p + bytes) with transparent huge pages when
  // first touched (what torch does for every allocation under THP_MEM_ALLOC_ENABLE=1):
  // 2 MiB faults instead of 4 KiB ones. Advice only; failure (or another OS) changes nothing.
  m.def("advise_huge_pages", [](std::uintptr_t p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const std::uintptr_t page = 4096, lo = (p + page - 1) & ~(page - 1),
                         hi = (p + bytes) & ~(page - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  });

  // The value checks of small CPU inputs (a decode step's), without torch's few microseconds
  // per reduction and host read: the largest float32 (NaN if any is NaN, -inf if n = 0) and
  // the smallest and largest int64 (n > 0).
  m.def("max_f32", [](std::uintptr_t p, int64_t n) {
    const float* x = reinterpret_cast<const float*>(p);
    float top = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int64_t i = 0; i < n; ++i) {
      nan |= x[i] != x[i];
      top = x[i] > top ? x[i] : top;
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : top;
  });
  m.def("min_max_i64", [](std::uintptr_t p, int64_t n) {
    const int64_t* x = reinterpret_cast<const int64_t*>(p);
    int64_t lo = n > 0 ? x[0] : 0, hi = lo;
    for (int64_t i = 1; i < n; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    return std::make_pair(lo, hi);
  });

  // Limits and layouts of the kernels, for the Python side to read.
  m.attr("HOLISTIC_QUERY_LANES") = semid_fast::kHolisticQueryLanes;
  m.attr("HOLISTIC_PACK_ITEMS") = semid_fast::kHolisticPackItems;
  m.attr("HOLISTIC_BOUNDED_MIN_ITEMS") = semid_fast::kHolisticBoundedMinItems;
  m.attr("RQ_MAX_BEAM_CANDIDATES") = semid_fast::kRqMaxBeamCandidates;
  m.attr("TRIE_MAX_CANDIDATES") = semid_fast::trie::kMaxCandidates;
  m.attr("STATUS_OK") = int(semid_fast::kOk);
  m.attr("STATUS_CODE_OUT_OF_RANGE") = int(semid_fast::kCodeOutOfRange);
  m.attr("STATUS_BAD_ARGUMENT") = int(semid_fast::kBadArgument);

  // Each takes the kernel's parameters in order (pointers as data_ptr() integers).
  SEMID_FAST_KERNEL_512(m, rq_encode_f32);
  SEMID_FAST_KERNEL_512(m, sinkhorn_codes_f32);
  SEMID_FAST_KERNEL_512(m, pq_encode_f32);
  SEMID_FAST_KERNEL_512(m, rq_decode_f32);
  SEMID_FAST_KERNEL_512(m, rq_quantize_bwd_f32);
  SEMID_FAST_KERNEL_512(m, pq_decode_f32);
  SEMID_FAST_KERNEL_512(m, kmeans_update_f32);
  SEMID_FAST_KERNEL_512(m, kmeanspp_f32);
  SEMID_FAST_KERNEL_512(m, holistic_topk_f32);
  SEMID_FAST_KERNEL_512(m, stream_read_floor);
  SEMID_FAST_KERNEL_512(m, holistic_lookup_floor_f32);
  SEMID_FAST_KERNEL_512(m, holistic_steps_floor);
  SEMID_FAST_KERNEL_512(m, holistic_pack_codes);
  SEMID_FAST_KERNEL(m, trie_sort);
  SEMID_FAST_KERNEL(m, trie_fill);
  SEMID_FAST_KERNEL(m, trie_beam_step);
  SEMID_FAST_KERNEL(m, trie_children_logsumexp);
  SEMID_FAST_KERNEL(m, trie_pool_update);
  SEMID_FAST_KERNEL(m, gumbel_noise);
  SEMID_FAST_KERNEL(m, gumbel_softmax_fwd_f32);
  SEMID_FAST_KERNEL(m, gumbel_softmax_bwd_f32);
  SEMID_FAST_KERNEL(m, gumbel_topk_f32);
  {
    using semid_fast::bind::constrain_flat;
    namespace isa_base = semid_fast::isa_base;
#if SEMID_FAST_HAS_AVX2
    namespace isa_fast = semid_fast::isa_avx2;
#else
    namespace isa_fast = semid_fast::isa_base;
#endif
    semid_fast::bind::def_kernel(m, "sid_constrain_f32",
                                 &constrain_flat<int, int, &isa_fast::sid_constrain_f32>,
                                 &constrain_flat<int, int, &isa_base::sid_constrain_f32>,
                                 use_avx2);
  }
}
