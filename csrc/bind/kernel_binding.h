// Binds a kernel by its signature, for the modules _C and _C_cuda: each pointer parameter
// arrives from Python as an integer (a data_ptr(), or a stream), every other parameter as
// itself, in the kernel's order; the GIL is released while the kernel runs and its status
// (Status or cudaError_t) comes back as an int.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>

#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace bind {

template <typename T>
struct Arg {
  using type = T;
  static T from(T v) { return v; }
};
template <typename T>
struct Arg<T*> {
  using type = std::uintptr_t;
  static T* from(std::uintptr_t p) { return reinterpret_cast<T*>(p); }
};

// Binds `name` to `fast` when use_fast() at call time, else to `base` (the same kernel
// compiled for another ISA; pass the same function twice when there is one).
template <typename R, typename... A>
void def_kernel(pybind11::module_& m, const char* name, R (*fast)(A...), R (*base)(A...),
                bool (*use_fast)()) {
  m.def(name, [fast, base, use_fast](typename Arg<A>::type... args) {
    pybind11::gil_scoped_release nogil;
    return int((use_fast() ? fast : base)(Arg<A>::from(args)...));
  });
}

// As def_kernel with a third build: `widest` when use_widest() at call time.
template <typename R, typename... A>
void def_kernel3(pybind11::module_& m, const char* name, R (*widest)(A...), R (*fast)(A...),
                 R (*base)(A...), bool (*use_widest)(), bool (*use_fast)()) {
  m.def(name, [widest, fast, base, use_widest, use_fast](typename Arg<A>::type... args) {
    pybind11::gil_scoped_release nogil;
    return int((use_widest() ? widest : use_fast() ? fast : base)(Arg<A>::from(args)...));
  });
}

// sid_constrain_f32 takes its inputs as one struct (trie_hf.h); Python passes the fields
// flat, in the struct's order, then the kernel's last parameter (threads or stream).
template <typename Last, typename R, R (*kernel)(const trie_hf::ConstrainArgs&, Last)>
R constrain_flat(const int64_t* input_ids, int64_t rows, int64_t ids_stride, int64_t length,
                 const int64_t* prev_ids, int64_t prev_len, int32_t* match, int64_t* start,
                 const int64_t* inverse, int64_t vocab_map, int64_t depth,
                 const int64_t* child_offsets, const int32_t* child_codes,
                 const int64_t* terminal, int64_t num_states, const int64_t* level_tokens,
                 int64_t k, const int64_t* suffix, int64_t n_suffix, int64_t eos,
                 int64_t num_beams, const float* scores, int64_t vocab, float* out,
                 int32_t* dead, Last last) {
  return kernel({input_ids, rows, ids_stride, length, prev_ids, prev_len, match, start, inverse,
                 vocab_map, depth, child_offsets, child_codes, terminal, num_states,
                 level_tokens, k, suffix, n_suffix, eos, num_beams, scores, vocab, out, dead},
                last);
}

}  // namespace bind
}  // namespace semid_fast
