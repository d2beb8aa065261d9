// pybind11 module _C: argument passing only. Pointers arrive as integers from data_ptr().
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "semid_fast/gumbel.h"
#include "semid_fast/kmeans.h"
#include "semid_fast/longid.h"
#include "semid_fast/quantize.h"
#include "semid_fast/trie.h"
#include "semid_fast/trie_hf.h"

namespace py = pybind11;

namespace {

// SEMID_FAST_CPU_ISA=baseline runs the baseline kernels on any CPU (so that tests cover them).
bool use_avx2() {
#if SEMID_FAST_HAS_AVX2
  static const bool ok = [] {
    const char* forced = std::getenv("SEMID_FAST_CPU_ISA");
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           !(forced && std::string(forced) == "baseline");
  }();
  return ok;
#else
  return false;
#endif
}

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Picks the kernel compiled for the best ISA this CPU has; the GIL is released while it runs.
#if SEMID_FAST_HAS_AVX2
#define SEMID_FAST_CALL(fn, ...)                                        \
  do {                                                                  \
    py::gil_scoped_release nogil;                                       \
    return use_avx2() ? semid_fast::isa_avx2::fn(__VA_ARGS__)           \
                      : semid_fast::isa_base::fn(__VA_ARGS__);          \
  } while (0)
#else
#define SEMID_FAST_CALL(fn, ...)                                        \
  do {                                                                  \
    py::gil_scoped_release nogil;                                       \
    return semid_fast::isa_base::fn(__VA_ARGS__);                       \
  } while (0)
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "semid_fast CPU kernels (raw pointers, no torch dependency)";
  m.def("isa", [] { return use_avx2() ? "avx2" : "baseline"; });
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

  m.def("rq_encode_f32",
        [](std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t codebooks, int64_t levels,
           int64_t k, int64_t beam_width, std::uintptr_t eps, int64_t sk_iters,
           std::uintptr_t codes, std::uintptr_t quantized, std::uintptr_t errors,
           int n_threads) {
          SEMID_FAST_CALL(rq_encode_f32, ptr<const float>(x), n, d, ptr<const float>(codebooks),
                          levels, k, beam_width, ptr<const double>(eps), sk_iters,
                          ptr<int64_t>(codes), ptr<float>(quantized), ptr<float>(errors),
                          n_threads);
        });
  m.def("sinkhorn_codes_f32",
        [](std::uintptr_t dist, int64_t n, int64_t k, double eps, int64_t iters,
           std::uintptr_t codes, int n_threads) {
          SEMID_FAST_CALL(sinkhorn_codes_f32, ptr<const float>(dist), n, k, eps, iters,
                          ptr<int64_t>(codes), n_threads);
        });
  m.def("pq_encode_f32",
        [](std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t codebooks, int64_t msub,
           int64_t k, std::uintptr_t codes, int n_threads) {
          SEMID_FAST_CALL(pq_encode_f32, ptr<const float>(x), n, d, ptr<const float>(codebooks),
                          msub, k, ptr<int64_t>(codes), n_threads);
        });
  m.def("rq_decode_f32",
        [](std::uintptr_t codes, int64_t n, int64_t levels, std::uintptr_t codebooks, int64_t k,
           int64_t d, std::uintptr_t out, int n_threads) {
          SEMID_FAST_CALL(rq_decode_f32, ptr<const int64_t>(codes), n, levels,
                          ptr<const float>(codebooks), k, d, ptr<float>(out), n_threads);
        });
  m.def("rq_quantize_bwd_f32",
        [](std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t codebooks, int64_t levels,
           int64_t k, std::uintptr_t codes, std::uintptr_t grad_quantized, float x_scale,
           float codebook_scale, std::uintptr_t grad_x, std::uintptr_t grad_codebooks,
           int n_threads) {
          SEMID_FAST_CALL(rq_quantize_bwd_f32, ptr<const float>(x), n, d,
                          ptr<const float>(codebooks), levels, k, ptr<const int64_t>(codes),
                          ptr<const float>(grad_quantized), x_scale, codebook_scale,
                          ptr<float>(grad_x), ptr<float>(grad_codebooks), n_threads);
        });
  m.def("pq_decode_f32",
        [](std::uintptr_t codes, int64_t n, int64_t msub, std::uintptr_t codebooks, int64_t k,
           int64_t dsub, std::uintptr_t out, int n_threads) {
          SEMID_FAST_CALL(pq_decode_f32, ptr<const int64_t>(codes), n, msub,
                          ptr<const float>(codebooks), k, dsub, ptr<float>(out), n_threads);
        });

  m.def("kmeans_update_f32",
        [](std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t codes, int64_t k,
           std::uintptr_t sums, std::uintptr_t counts, int n_threads) {
          SEMID_FAST_CALL(kmeans_update_f32, ptr<const float>(x), n, d, ptr<const int64_t>(codes),
                          k, ptr<double>(sums), ptr<int64_t>(counts), n_threads);
        });

  m.def("kmeanspp_f32",
        [](std::uintptr_t x, int64_t n, int64_t d, int64_t k, int64_t first, std::uintptr_t draws,
           int64_t trials, std::uintptr_t picks, int n_threads) {
          SEMID_FAST_CALL(kmeanspp_f32, ptr<const float>(x), n, d, k, first,
                          ptr<const double>(draws), trials, ptr<int64_t>(picks), n_threads);
        });

  m.def("holistic_topk_f32",
        [](std::uintptr_t table, int interleaved, int64_t b, int64_t msub, int64_t k,
           std::uintptr_t codes, int code_bytes, int64_t n, std::uintptr_t candidates, int64_t c,
           std::uintptr_t item_mask, int64_t mask_stride, float divisor, int64_t topk,
           std::uintptr_t out_scores, std::uintptr_t out_ids, int n_threads) {
          SEMID_FAST_CALL(holistic_topk_f32, ptr<const float>(table), interleaved, b, msub, k,
                          ptr<const void>(codes), code_bytes, n, ptr<const int64_t>(candidates),
                          c, ptr<const uint8_t>(item_mask), mask_stride, divisor, topk,
                          ptr<float>(out_scores), ptr<int64_t>(out_ids), n_threads);
        });
  m.def("trie_sort",
        [](std::uintptr_t codes, std::uintptr_t lengths, int64_t n, int64_t l,
           std::uintptr_t vocab, std::uintptr_t order, std::uintptr_t sorted_codes,
           std::uintptr_t sorted_lengths, std::uintptr_t lcp, std::uintptr_t level_counts,
           int n_threads) {
          SEMID_FAST_CALL(trie_sort, ptr<const int64_t>(codes), ptr<const int64_t>(lengths), n, l,
                          ptr<const int64_t>(vocab), ptr<int64_t>(order),
                          ptr<int64_t>(sorted_codes), ptr<int64_t>(sorted_lengths),
                          ptr<int64_t>(lcp), ptr<int64_t>(level_counts), n_threads);
        });
  m.def("trie_fill",
        [](std::uintptr_t sorted_codes, std::uintptr_t sorted_lengths, int64_t n, int64_t l,
           std::uintptr_t order, std::uintptr_t lcp, std::uintptr_t level_starts,
           int64_t max_vocab, std::uintptr_t child_offsets, std::uintptr_t child_codes,
           std::uintptr_t edge_keys, std::uintptr_t terminal) {
          SEMID_FAST_CALL(trie_fill, ptr<const int64_t>(sorted_codes),
                          ptr<const int64_t>(sorted_lengths), n, l, ptr<const int64_t>(order),
                          ptr<const int64_t>(lcp), ptr<const int64_t>(level_starts), max_vocab,
                          ptr<int64_t>(child_offsets), ptr<int32_t>(child_codes),
                          ptr<int64_t>(edge_keys), ptr<int64_t>(terminal));
        });
  m.def("trie_beam_step",
        [](std::uintptr_t log_probs, std::uintptr_t beam_scores, std::uintptr_t states,
           std::uintptr_t shift, int64_t b, int64_t w_in, int64_t v, std::uintptr_t child_offsets,
           std::uintptr_t child_codes, std::uintptr_t terminal, int64_t s, int64_t w_out,
           std::uintptr_t out_scores, std::uintptr_t out_parents, std::uintptr_t out_tokens,
           std::uintptr_t out_states, int n_threads) {
          SEMID_FAST_CALL(trie_beam_step, ptr<const float>(log_probs),
                          ptr<const float>(beam_scores), ptr<const int64_t>(states),
                          ptr<const float>(shift), b, w_in, v,
                          ptr<const int64_t>(child_offsets), ptr<const int32_t>(child_codes),
                          ptr<const int64_t>(terminal), s, w_out, ptr<float>(out_scores),
                          ptr<int64_t>(out_parents), ptr<int64_t>(out_tokens),
                          ptr<int64_t>(out_states), n_threads);
        });
  m.def("trie_children_logsumexp",
        [](std::uintptr_t log_probs, std::uintptr_t states, int64_t r, int64_t v,
           std::uintptr_t child_offsets, std::uintptr_t child_codes, int64_t s,
           std::uintptr_t out, int n_threads) {
          SEMID_FAST_CALL(trie_children_logsumexp, ptr<const float>(log_probs),
                          ptr<const int64_t>(states), r, v, ptr<const int64_t>(child_offsets),
                          ptr<const int32_t>(child_codes), s, ptr<float>(out), n_threads);
        });
  m.def("trie_pool_update",
        [](std::uintptr_t pool_scores, std::uintptr_t pool_states, std::uintptr_t scores,
           std::uintptr_t states, int64_t b, int64_t p, int64_t w, std::uintptr_t terminal,
           int64_t s, std::uintptr_t out_pool_scores, std::uintptr_t out_pool_states,
           std::uintptr_t out_states, int n_threads) {
          SEMID_FAST_CALL(trie_pool_update, ptr<const float>(pool_scores),
                          ptr<const int64_t>(pool_states), ptr<const float>(scores),
                          ptr<const int64_t>(states), b, p, w, ptr<const int64_t>(terminal), s,
                          ptr<float>(out_pool_scores), ptr<int64_t>(out_pool_states),
                          ptr<int64_t>(out_states), n_threads);
        });
  m.def("sid_constrain_f32",
        [](std::uintptr_t input_ids, int64_t rows, int64_t ids_stride, int64_t length,
           std::uintptr_t prev_ids, int64_t prev_len, std::uintptr_t match, std::uintptr_t start,
           std::uintptr_t inverse, int64_t vocab_map, int64_t depth,
           std::uintptr_t child_offsets, std::uintptr_t child_codes, std::uintptr_t terminal,
           int64_t num_states, std::uintptr_t level_tokens, int64_t k, std::uintptr_t suffix,
           int64_t n_suffix, int64_t eos, int64_t num_beams, std::uintptr_t scores,
           int64_t vocab, std::uintptr_t out, std::uintptr_t dead, int n_threads) {
          const semid_fast::trie_hf::ConstrainArgs a{
              ptr<const int64_t>(input_ids), rows, ids_stride, length,
              ptr<const int64_t>(prev_ids), prev_len, ptr<int32_t>(match),
              ptr<int64_t>(start), ptr<const int64_t>(inverse), vocab_map, depth,
              ptr<const int64_t>(child_offsets), ptr<const int32_t>(child_codes),
              ptr<const int64_t>(terminal), num_states, ptr<const int64_t>(level_tokens), k,
              ptr<const int64_t>(suffix), n_suffix, eos, num_beams, ptr<const float>(scores),
              vocab, ptr<float>(out), ptr<int32_t>(dead)};
          SEMID_FAST_CALL(sid_constrain_f32, a, n_threads);
        });
  m.def("gumbel_noise",
        [](uint64_t seed, uint64_t offset, int64_t start, int64_t n, std::uintptr_t bits,
           std::uintptr_t noise, int n_threads) {
          SEMID_FAST_CALL(gumbel_noise, seed, offset, start, n, ptr<uint32_t>(bits),
                          ptr<float>(noise), n_threads);
        });
  m.def("gumbel_softmax_fwd_f32",
        [](std::uintptr_t x, int64_t rows, int64_t v, std::uintptr_t tau, int64_t tau_stride,
           std::uintptr_t scale, int64_t scale_stride, uint64_t seed, uint64_t offset, int hard,
           std::uintptr_t y, std::uintptr_t argmax, int n_threads) {
          SEMID_FAST_CALL(gumbel_softmax_fwd_f32, ptr<const float>(x), rows, v,
                          ptr<const float>(tau), tau_stride, ptr<const float>(scale),
                          scale_stride, seed, offset, hard, ptr<float>(y), ptr<int64_t>(argmax),
                          n_threads);
        });
  m.def("gumbel_softmax_bwd_f32",
        [](std::uintptr_t x, std::uintptr_t dy, int64_t rows, int64_t v, std::uintptr_t tau,
           int64_t tau_stride, std::uintptr_t scale, int64_t scale_stride, uint64_t seed,
           uint64_t offset, std::uintptr_t dx, std::uintptr_t row_gz, std::uintptr_t row_zz,
           int n_threads) {
          SEMID_FAST_CALL(gumbel_softmax_bwd_f32, ptr<const float>(x), ptr<const float>(dy), rows,
                          v, ptr<const float>(tau), tau_stride, ptr<const float>(scale),
                          scale_stride, seed, offset, ptr<float>(dx), ptr<float>(row_gz),
                          ptr<float>(row_zz), n_threads);
        });
  m.def("gumbel_topk_f32",
        [](std::uintptr_t x, int64_t rows, int64_t v, std::uintptr_t tau, int64_t tau_stride,
           uint64_t seed, uint64_t offset, int64_t k, std::uintptr_t out_scores,
           std::uintptr_t out_idx, int n_threads) {
          SEMID_FAST_CALL(gumbel_topk_f32, ptr<const float>(x), rows, v, ptr<const float>(tau),
                          tau_stride, seed, offset, k, ptr<float>(out_scores),
                          ptr<int64_t>(out_idx), n_threads);
        });
}
