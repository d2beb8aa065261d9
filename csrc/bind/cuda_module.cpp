// pybind11 module _C_cuda: argument passing only (kernel_binding.h), plus the kernels' limits.
// Imports on a machine without a GPU (or driver) and then reports no device.
#include <pybind11/pybind11.h>

#include "kernel_binding.h"
#include "semid_fast/common.h"
#include "semid_fast/cuda_gumbel.h"
#include "semid_fast/cuda_longid.h"
#include "semid_fast/cuda_quantize.h"
#include "semid_fast/cuda_trie.h"

namespace sfc = semid_fast::cuda;

namespace {
bool one_build() { return true; }
}  // namespace

// Binds semid_fast::cuda::NAME under the same name (the stream is its last parameter).
#define SEMID_FAST_LAUNCHER(m, name) \
  semid_fast::bind::def_kernel(m, #name, &sfc::name, &sfc::name, one_build)

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

  // Limits of the kernels, for the Python side to read.
  m.attr("HOLISTIC_MAX_K") = sfc::kHolisticMaxK;
  m.attr("TRIE_MAX_BEAMS") = sfc::kTrieMaxBeams;
  m.attr("TRIE_MAX_BEAMS_IN") = sfc::kTrieMaxBeamsIn;
  m.attr("DTYPE_FLOAT32") = int(semid_fast::kFloat32);
  m.attr("DTYPE_FLOAT16") = int(semid_fast::kFloat16);
  m.attr("DTYPE_BFLOAT16") = int(semid_fast::kBFloat16);

  // Each takes the launcher's parameters in order (pointers and the stream as integers).
  SEMID_FAST_LAUNCHER(m, rq_encode);
  SEMID_FAST_LAUNCHER(m, pq_encode);
  SEMID_FAST_LAUNCHER(m, rq_decode);
  SEMID_FAST_LAUNCHER(m, pq_decode);
  SEMID_FAST_LAUNCHER(m, holistic_block_topk);
  SEMID_FAST_LAUNCHER(m, holistic_candidate_keys);
  SEMID_FAST_LAUNCHER(m, trie_beam_step);
  SEMID_FAST_LAUNCHER(m, trie_pool_update);
  SEMID_FAST_LAUNCHER(m, gumbel_softmax_fwd);
  SEMID_FAST_LAUNCHER(m, gumbel_softmax_bwd);
  {
    constexpr auto flat =
        &semid_fast::bind::constrain_flat<cudaStream_t, cudaError_t, &sfc::sid_constrain_f32>;
    semid_fast::bind::def_kernel(m, "sid_constrain_f32", flat, flat, one_build);
  }
}
