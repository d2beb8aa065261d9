// CUDA kernel of the trie family: the fused constrained beam step (see cuda_trie.h and
// trie.h for the layout, the beam states and the ranking).
//
// One thread block per batch row:
//  1. Every beam's candidate count (stop + children) goes to shared memory and one warp
//     scans it into each beam's first rank, so rank r belongs to the beam found by a binary
//     search over those starts; a candidate's place in the row is known without a list.
//  2. The block walks the ranks blockDim at a time (two barriers a round): each thread
//     builds the uint64 key of its candidate (trie.h: score order word, then rank) and
//     keeps it only if it beats the current beam_width-th best key, appending it to a
//     shared staging area. When the area could overflow (and once at the end) the best list
//     and the staging area are bitonic-sorted together and the best list is cut back. With
//     ordinary log-probs the threshold rises fast and few sorts run.
//  3. The winners' keys are decoded (rank -> beam, child) and the outputs written; the
//     score is recomputed with the same float add as in step 2 (and as on the CPU).
//
// Logits processor (semid_fast.hf): when the shape allows a continuation, one thread per row
// first compares it with the previous call's rows. Then one block per group of num_beams
// rows (one row per block without the fallback): the block reduces the matches to the
// start column, fills each row with -inf (coalesced), thread 0 walks the row's tokens, then
// the threads share the children's token writes. Row logic: trie_hf.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "semid_fast/cuda_common.cuh"
#include "semid_fast/cuda_trie.h"
#include "semid_fast/trie.h"
#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kStage = 1024;  // staging slots; the best list is padded to the same size

struct Beam {
  int64_t state;  // live state (>= 0), or the finished state (<= -2); -1 = no candidates
  bool stop;      // offers the stop / carry candidate (rank 0 of the beam)
  int64_t first_edge, n_edges;
};

__device__ __forceinline__ Beam read_beam(const int64_t* states, const int64_t* child_offsets,
                                          const int64_t* terminal, int64_t s, int64_t idx) {
  const int64_t st = states[idx];
  Beam beam{-1, false, 0, 0};
  if (st >= 0 && st < s) {
    beam.state = st;
    beam.stop = terminal[st] >= 0;
    beam.first_edge = child_offsets[st];
    beam.n_edges = child_offsets[st + 1] - beam.first_edge;
  } else if (st <= -2 && ~st < s && terminal[~st] >= 0) {
    beam.state = st;
    beam.stop = true;
  }
  return beam;
}

// Index of the beam whose ranks contain r: the last j with start[j] <= r.
__device__ __forceinline__ int beam_of(const uint32_t* start, int w_in, uint32_t r) {
  int lo = 0, hi = w_in - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (start[mid] <= r) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Descending bitonic sort of n (a power of two) keys in shared memory.
__device__ void bitonic_sort_desc(uint64_t* keys, int n) {
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int partner = i ^ j;
        if (partner > i) {
          const uint64_t a = keys[i], b = keys[partner];
          const bool descending = (i & k) == 0;
          if (descending ? a < b : a > b) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kThreads) beam_step_kernel(
    const float* __restrict__ log_probs, const float* __restrict__ beam_scores,
    const int64_t* __restrict__ states, const float* __restrict__ shift, int w_in, int64_t v,
    const int64_t* __restrict__ child_offsets, const int32_t* __restrict__ child_codes,
    const int64_t* __restrict__ terminal, int64_t s, int w_out, float* __restrict__ out_scores,
    int64_t* __restrict__ out_parents, int64_t* __restrict__ out_tokens,
    int64_t* __restrict__ out_states) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);  // [0, kStage) best, then staging
  uint32_t* start = reinterpret_cast<uint32_t*>(keys + 2 * kStage);  // w_in + 1
  __shared__ int staged;
  __shared__ uint64_t threshold;

  const int64_t row = blockIdx.x;
  const int64_t base = row * w_in;

  // 1. Candidate counts, then the exclusive scan (one warp, a segment per lane).
  for (int j = threadIdx.x; j < w_in; j += blockDim.x) {
    const Beam beam = read_beam(states, child_offsets, terminal, s, base + j);
    start[j + 1] = uint32_t(beam.n_edges) + (beam.stop ? 1u : 0u);
  }
  for (int i = threadIdx.x; i < 2 * kStage; i += blockDim.x) keys[i] = 0;
  if (threadIdx.x == 0) {
    start[0] = 0;
    staged = 0;
    threshold = 0;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int per_lane = (w_in + 31) / 32;
    const int lo = 1 + lane * per_lane, hi = min(w_in + 1, lo + per_lane);
    uint32_t sum = 0;
    for (int j = lo; j < hi; ++j) sum += start[j];
    uint32_t before = sum;  // inclusive scan of the lane sums
    for (int d = 1; d < 32; d <<= 1) {
      const uint32_t other = __shfl_up_sync(0xffffffffu, before, d);
      if (lane >= d) before += other;
    }
    uint32_t running = before - sum;
    for (int j = lo; j < hi; ++j) {
      running += start[j];
      start[j] = running;
    }
  }
  __syncthreads();
  const uint32_t total = start[w_in];

  // 2. Stream the candidates through the threshold into the staging area.
  for (uint32_t first = 0; first < total; first += blockDim.x) {
    // Every thread reads the count before any thread of this round adds to it, so the
    // branch is uniform.
    const int already = staged;
    __syncthreads();
    if (already > kStage - int(blockDim.x)) {
      for (int i = kStage + already + threadIdx.x; i < 2 * kStage; i += blockDim.x) keys[i] = 0;
      __syncthreads();
      bitonic_sort_desc(keys, 2 * kStage);
      if (threadIdx.x == 0) {
        staged = 0;
        threshold = keys[w_out - 1];
      }
      __syncthreads();
    }
    const uint32_t r = first + threadIdx.x;
    if (r < total) {
      const int j = beam_of(start, w_in, r);
      const Beam beam = read_beam(states, child_offsets, terminal, s, base + j);
      const float sigma = beam_scores[base + j];
      const uint32_t offset = r - start[j];
      uint64_t key = 0;
      if (beam.stop && offset == 0) {
        key = trie::candidate_key(sigma, r);
      } else {
        // The offset lies inside the beam's edges by construction of `start`; the range test
        // keeps the read in bounds even so, and codes outside [0, v) are no candidates.
        const int64_t edge = beam.first_edge + offset - (beam.stop ? 1 : 0);
        const int64_t code = edge < beam.first_edge + beam.n_edges ? child_codes[edge] : -1;
        if (uint64_t(code) < uint64_t(v)) {
          const float sh = shift ? shift[base + j] : 0.0f;
          key = trie::candidate_key(
              __fadd_rn(sigma, __fsub_rn(log_probs[(base + j) * v + code], sh)), r);
        }
      }
      if (key > threshold) keys[kStage + atomicAdd(&staged, 1)] = key;
    }
    __syncthreads();
  }
  if (staged > 0) {
    for (int i = kStage + staged + threadIdx.x; i < 2 * kStage; i += blockDim.x) keys[i] = 0;
    __syncthreads();
    bitonic_sort_desc(keys, 2 * kStage);
  }

  // 3. Decode the winners.
  for (int k = threadIdx.x; k < w_out; k += blockDim.x) {
    const int64_t o = row * w_out + k;
    const uint64_t key = keys[k];
    if (key == 0) {
      out_scores[o] = -__int_as_float(0x7f800000);
      out_parents[o] = -1;
      out_tokens[o] = -1;
      out_states[o] = -1;
      continue;
    }
    const uint32_t r = trie::key_rank(key);
    const int j = beam_of(start, w_in, r);
    const Beam beam = read_beam(states, child_offsets, terminal, s, base + j);
    const float sigma = beam_scores[base + j];
    const uint32_t offset = r - start[j];
    out_parents[o] = j;
    if (beam.stop && offset == 0) {
      out_scores[o] = sigma;
      out_tokens[o] = -1;
      out_states[o] = beam.state >= 0 ? ~beam.state : beam.state;
    } else {
      const int64_t edge = beam.first_edge + offset - (beam.stop ? 1 : 0);
      const int64_t code = child_codes[edge];
      const float sh = shift ? shift[base + j] : 0.0f;
      out_scores[o] = __fadd_rn(sigma, __fsub_rn(log_probs[(base + j) * v + code], sh));
      out_tokens[o] = code;
      out_states[o] = edge + 1;
    }
  }
}

}  // namespace

cudaError_t trie_beam_step(const float* log_probs, const float* beam_scores,
                           const int64_t* states, const float* shift, int64_t b, int64_t w_in,
                           int64_t v, const int64_t* child_offsets, const int32_t* child_codes,
                           const int64_t* terminal, int64_t s, int64_t w_out, float* out_scores,
                           int64_t* out_parents, int64_t* out_tokens, int64_t* out_states,
                           cudaStream_t stream) {
  if (b < 0 || w_in < 1 || w_in > kTrieMaxBeamsIn || w_out < 1 || w_out > kTrieMaxBeams ||
      v < 1 || s < 1 || b > INT32_MAX)
    return cudaErrorInvalidValue;
  if (b == 0) return cudaSuccess;
  const size_t smem = 2 * kStage * sizeof(uint64_t) + (w_in + 1) * sizeof(uint32_t);
  const cudaError_t e = allow_dynamic_smem(beam_step_kernel, smem);
  if (e != cudaSuccess) return e;
  beam_step_kernel<<<unsigned(b), kThreads, smem, stream>>>(
      log_probs, beam_scores, states, shift, int(w_in), v, child_offsets, child_codes,
      terminal, s,
      int(w_out), out_scores, out_parents, out_tokens, out_states);
  return cudaGetLastError();
}

namespace {

// Pool update: one block per row; the p + w keys (pool first, then the completed beams, 0
// for empty entries) are bitonic-sorted in shared memory and the best p decoded.
__global__ void __launch_bounds__(kThreads) pool_update_kernel(
    const float* __restrict__ pool_scores, const int64_t* __restrict__ pool_states,
    const float* __restrict__ scores, const int64_t* __restrict__ states, int p, int w,
    int n, const int64_t* __restrict__ terminal, int64_t s, float* __restrict__ out_pool_scores,
    int64_t* __restrict__ out_pool_states, int64_t* __restrict__ out_states) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);  // n: p + w rounded up to a power of 2
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    uint64_t key = 0;
    if (i < p) {
      if (trie::is_id_state(pool_states[row * p + i], terminal, s))
        key = trie::candidate_key(pool_scores[row * p + i], uint32_t(i));
    } else if (i < p + w) {
      const int64_t st = states[row * w + i - p];
      const bool done = trie::is_id_state(st, terminal, s);
      if (done) key = trie::candidate_key(scores[row * w + i - p], uint32_t(i));
      out_states[row * w + i - p] = done ? -1 : st;
    }
    keys[i] = key;
  }
  __syncthreads();
  bitonic_sort_desc(keys, n);
  for (int k = threadIdx.x; k < p; k += blockDim.x) {
    const int64_t o = row * p + k;
    const uint64_t key = keys[k];
    if (key == 0) {
      out_pool_scores[o] = -__int_as_float(0x7f800000);
      out_pool_states[o] = -1;
      continue;
    }
    const int i = int(trie::key_rank(key));
    out_pool_scores[o] = i < p ? pool_scores[row * p + i] : scores[row * w + i - p];
    out_pool_states[o] = i < p ? pool_states[row * p + i] : states[row * w + i - p];
  }
}

}  // namespace

cudaError_t trie_pool_update(const float* pool_scores, const int64_t* pool_states,
                             const float* scores, const int64_t* states, int64_t b, int64_t p,
                             int64_t w, const int64_t* terminal, int64_t s,
                             float* out_pool_scores, int64_t* out_pool_states,
                             int64_t* out_states, cudaStream_t stream) {
  if (b < 0 || b > INT32_MAX || p < 1 || p > kTrieMaxBeams || w < 1 || w > kTrieMaxBeams ||
      s < 1)
    return cudaErrorInvalidValue;
  if (b == 0) return cudaSuccess;
  int n = 1;
  while (n < p + w) n <<= 1;
  pool_update_kernel<<<unsigned(b), kThreads, n * sizeof(uint64_t), stream>>>(
      pool_scores, pool_states, scores, states, int(p), int(w), n, terminal, s, out_pool_scores,
      out_pool_states, out_states);
  return cudaGetLastError();
}

namespace {

constexpr int kConstrainThreads = 256;
constexpr int kMatchThreads = 128;

__global__ void __launch_bounds__(kMatchThreads) match_kernel(trie_hf::ConstrainArgs a) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < a.rows) a.match[r] = trie_hf::extends_a_row(a, r) ? 1 : 0;
}

__device__ trie_hf::RowState shared_walk(const trie_hf::ConstrainArgs& a, int64_t r,
                                         int64_t start, int64_t step) {
  __shared__ trie_hf::RowState rs;
  __syncthreads();  // rs of the previous row is no longer read
  if (threadIdx.x == 0) rs = trie_hf::walk_row(a, a.input_ids + r * a.ids_stride + start, step);
  __syncthreads();
  return rs;
}

__global__ void __launch_bounds__(kConstrainThreads) constrain_kernel(trie_hf::ConstrainArgs a) {
  const int64_t group = a.num_beams > 0 ? a.num_beams : 1;
  const int64_t first_row = int64_t(blockIdx.x) * group;
  const float neg_inf = -__int_as_float(0x7f800000);
  // Every block decides the start from all rows' matches. Block 0 then stores it in the
  // buffer the others read: when the call continues it stores the value they read, when not
  // they do not read it, so the order does not matter.
  bool continues = false;
  if (a.match != nullptr) {
    int all = 1;
    for (int64_t i = threadIdx.x; i < a.rows; i += blockDim.x) all &= a.match[i];
    continues = __syncthreads_and(all) != 0;
  }
  const int64_t start = trie_hf::start_column(a, continues);
  const int64_t step = a.length - start;
  __syncthreads();  // every thread of block 0 has read the old start
  if (blockIdx.x == 0 && threadIdx.x == 0) *a.start = start;
  __shared__ int satisfied;
  if (threadIdx.x == 0) satisfied = 0;
  for (int64_t r = first_row; r < first_row + group; ++r) {
    const float* in_row = a.scores + r * a.vocab;
    float* out_row = a.out + r * a.vocab;
    for (int64_t t = threadIdx.x; t < a.vocab; t += blockDim.x) out_row[t] = neg_inf;
    // shared_walk's barriers order the fill before the writes below
    const trie_hf::RowState rs = shared_walk(a, r, start, step);
    const bool dead = trie_hf::for_each_allowed(a, rs, step, threadIdx.x, blockDim.x,
                                                threadIdx.x == 0, [&](int64_t token) {
                                                  if (token < 0 || token >= a.vocab) return;
                                                  out_row[token] = in_row[token];
                                                  if (in_row[token] != neg_inf) satisfied = 1;
                                                });
    if (dead && threadIdx.x == 0) *a.dead = 1;
  }
  if (a.num_beams == 0) return;
  __syncthreads();
  if (satisfied) return;  // the same value in every thread after the barrier
  for (int64_t r = first_row; r < first_row + group; ++r) {
    float* out_row = a.out + r * a.vocab;
    const trie_hf::RowState rs = shared_walk(a, r, start, step);
    trie_hf::for_each_allowed(a, rs, step, threadIdx.x, blockDim.x, threadIdx.x == 0,
                              [&](int64_t token) {
                                if (token >= 0 && token < a.vocab) out_row[token] = 0.0f;
                              });
  }
}

}  // namespace

cudaError_t sid_constrain_f32(const trie_hf::ConstrainArgs& args, cudaStream_t stream) {
  if (!trie_hf::valid_args(args) || (args.prev_ids != nullptr && args.match == nullptr))
    return cudaErrorInvalidValue;
  trie_hf::ConstrainArgs a = args;
  if (a.prev_ids == nullptr) a.match = nullptr;
  const int64_t groups = a.num_beams > 0 ? a.rows / a.num_beams : a.rows;
  if (groups == 0) return cudaSuccess;
  if (groups > 0x7fffffff) return cudaErrorInvalidValue;
  if (a.match != nullptr) {
    match_kernel<<<unsigned((a.rows + kMatchThreads - 1) / kMatchThreads), kMatchThreads, 0,
                   stream>>>(a);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  constrain_kernel<<<unsigned(groups), kConstrainThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace semid_fast
