// pybind11 module _C_cuda: argument passing only. Pointers and the stream arrive as integers.
// Imports on a machine without a GPU (or driver) and then reports no device.
#include <pybind11/pybind11.h>

#include "semid_fast/cuda_gumbel.h"
#include "semid_fast/cuda_longid.h"
#include "semid_fast/cuda_quantize.h"
#include "semid_fast/cuda_trie.h"

namespace py = pybind11;
namespace sfc = semid_fast::cuda;

namespace {
template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "semid_fast CUDA kernels (raw pointers and streams, no torch dependency)";
  m.def("device_count", [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no driver / no device" error
      return 0;
    }
    return count;
  });
  m.def("runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("error_string", [](int code) { return std::string(cudaGetErrorString(cudaError_t(code))); });

  m.def("rq_encode",
        [](std::uintptr_t x, int x_dtype, int64_t n, int64_t d, std::uintptr_t codebooks,
           int64_t levels, int64_t k, std::uintptr_t codes, std::uintptr_t quantized,
           std::uintptr_t errors, std::uintptr_t stream) {
          return int(sfc::rq_encode(ptr<const void>(x), x_dtype, n, d, ptr<const float>(codebooks),
                                    levels, k, ptr<int64_t>(codes), ptr<float>(quantized),
                                    ptr<float>(errors), stream_of(stream)));
        });
  m.def("pq_encode",
        [](std::uintptr_t x, int x_dtype, int64_t n, int64_t d, std::uintptr_t codebooks,
           int64_t msub, int64_t k, std::uintptr_t codes, std::uintptr_t stream) {
          return int(sfc::pq_encode(ptr<const void>(x), x_dtype, n, d, ptr<const float>(codebooks),
                                    msub, k, ptr<int64_t>(codes), stream_of(stream)));
        });
  m.def("rq_decode",
        [](std::uintptr_t codes, int64_t n, int64_t levels, std::uintptr_t codebooks, int64_t k,
           int64_t d, std::uintptr_t out, std::uintptr_t stream) {
          return int(sfc::rq_decode(ptr<const int64_t>(codes), n, levels,
                                    ptr<const float>(codebooks), k, d, ptr<float>(out),
                                    stream_of(stream)));
        });
  m.def("pq_decode",
        [](std::uintptr_t codes, int64_t n, int64_t msub, std::uintptr_t codebooks, int64_t k,
           int64_t dsub, std::uintptr_t out, std::uintptr_t stream) {
          return int(sfc::pq_decode(ptr<const int64_t>(codes), n, msub,
                                    ptr<const float>(codebooks), k, dsub, ptr<float>(out),
                                    stream_of(stream)));
        });
  m.def("holistic_block_topk",
        [](std::uintptr_t table, int64_t b, int64_t msub, int64_t k, std::uintptr_t codes,
           int code_bytes, int64_t n, std::uintptr_t item_mask, int64_t mask_stride,
           float divisor, int64_t topk, int64_t items_per_block, std::uintptr_t block_keys,
           std::uintptr_t stream) {
          return int(sfc::holistic_block_topk(
              ptr<const float>(table), b, msub, k, ptr<const void>(codes), code_bytes, n,
              ptr<const uint8_t>(item_mask), mask_stride, divisor, topk, items_per_block,
              ptr<int64_t>(block_keys), stream_of(stream)));
        });
  m.def("holistic_candidate_keys",
        [](std::uintptr_t table, int64_t b, int64_t msub, int64_t k, std::uintptr_t codes,
           int code_bytes, int64_t n, std::uintptr_t candidates, int64_t c,
           std::uintptr_t item_mask, int64_t mask_stride, float divisor, std::uintptr_t keys,
           std::uintptr_t stream) {
          return int(sfc::holistic_candidate_keys(
              ptr<const float>(table), b, msub, k, ptr<const void>(codes), code_bytes, n,
              ptr<const int64_t>(candidates), c, ptr<const uint8_t>(item_mask), mask_stride,
              divisor, ptr<int64_t>(keys), stream_of(stream)));
        });
  m.def("trie_beam_step",
        [](std::uintptr_t log_probs, std::uintptr_t beam_scores, std::uintptr_t states,
           std::uintptr_t shift, int64_t b, int64_t w_in, int64_t v, std::uintptr_t child_offsets,
           std::uintptr_t child_codes, std::uintptr_t terminal, int64_t s, int64_t w_out,
           std::uintptr_t out_scores, std::uintptr_t out_parents, std::uintptr_t out_tokens,
           std::uintptr_t out_states, std::uintptr_t stream) {
          return int(sfc::trie_beam_step(
              ptr<const float>(log_probs), ptr<const float>(beam_scores),
              ptr<const int64_t>(states), ptr<const float>(shift), b, w_in, v,
              ptr<const int64_t>(child_offsets),
              ptr<const int32_t>(child_codes), ptr<const int64_t>(terminal), s, w_out,
              ptr<float>(out_scores), ptr<int64_t>(out_parents), ptr<int64_t>(out_tokens),
              ptr<int64_t>(out_states), stream_of(stream)));
        });
  m.def("trie_pool_update",
        [](std::uintptr_t pool_scores, std::uintptr_t pool_states, std::uintptr_t scores,
           std::uintptr_t states, int64_t b, int64_t p, int64_t w, std::uintptr_t terminal,
           int64_t s, std::uintptr_t out_pool_scores, std::uintptr_t out_pool_states,
           std::uintptr_t out_states, std::uintptr_t stream) {
          return int(sfc::trie_pool_update(
              ptr<const float>(pool_scores), ptr<const int64_t>(pool_states),
              ptr<const float>(scores), ptr<const int64_t>(states), b, p, w,
              ptr<const int64_t>(terminal), s, ptr<float>(out_pool_scores),
              ptr<int64_t>(out_pool_states), ptr<int64_t>(out_states), stream_of(stream)));
        });
  m.def("sid_constrain_f32",
        [](std::uintptr_t input_ids, int64_t rows, int64_t ids_stride, int64_t length,
           std::uintptr_t prev_ids, int64_t prev_len, std::uintptr_t match, std::uintptr_t start,
           std::uintptr_t inverse, int64_t vocab_map, int64_t depth,
           std::uintptr_t child_offsets, std::uintptr_t child_codes, std::uintptr_t terminal,
           int64_t num_states, std::uintptr_t level_tokens, int64_t k, std::uintptr_t suffix,
           int64_t n_suffix, int64_t eos, int64_t num_beams, std::uintptr_t scores,
           int64_t vocab, std::uintptr_t out, std::uintptr_t dead, std::uintptr_t stream) {
          const semid_fast::trie_hf::ConstrainArgs a{
              ptr<const int64_t>(input_ids), rows, ids_stride, length,
              ptr<const int64_t>(prev_ids), prev_len, ptr<int32_t>(match),
              ptr<int64_t>(start), ptr<const int64_t>(inverse), vocab_map, depth,
              ptr<const int64_t>(child_offsets), ptr<const int32_t>(child_codes),
              ptr<const int64_t>(terminal), num_states, ptr<const int64_t>(level_tokens), k,
              ptr<const int64_t>(suffix), n_suffix, eos, num_beams, ptr<const float>(scores),
              vocab, ptr<float>(out), ptr<int32_t>(dead)};
          return int(sfc::sid_constrain_f32(a, stream_of(stream)));
        });
  m.def("gumbel_softmax_fwd",
        [](std::uintptr_t x, int dtype, int64_t rows, int64_t v, std::uintptr_t tau,
           int64_t tau_stride, std::uintptr_t scale, int64_t scale_stride, uint64_t seed,
           uint64_t offset, int hard, std::uintptr_t y, std::uintptr_t argmax,
           std::uintptr_t stream) {
          return int(sfc::gumbel_softmax_fwd(ptr<const void>(x), dtype, rows, v,
                                             ptr<const float>(tau), tau_stride,
                                             ptr<const float>(scale), scale_stride, seed, offset,
                                             hard, ptr<void>(y), ptr<int64_t>(argmax),
                                             stream_of(stream)));
        });
  m.def("gumbel_softmax_bwd",
        [](std::uintptr_t x, std::uintptr_t dy, int dtype, int64_t rows, int64_t v,
           std::uintptr_t tau, int64_t tau_stride, std::uintptr_t scale, int64_t scale_stride,
           uint64_t seed, uint64_t offset, std::uintptr_t dx, std::uintptr_t row_gz,
           std::uintptr_t row_zz, std::uintptr_t stream) {
          return int(sfc::gumbel_softmax_bwd(ptr<const void>(x), ptr<const void>(dy), dtype, rows,
                                             v, ptr<const float>(tau), tau_stride,
                                             ptr<const float>(scale), scale_stride, seed, offset,
                                             ptr<float>(dx), ptr<float>(row_gz),
                                             ptr<float>(row_zz), stream_of(stream)));
        });
}
