// The masked LSTM recurrence of lstm_kernel.py for a CPU, each time loop in one call: per step one
// matrix product (in MKL or the kernel below) and one pass of fused gate arithmetic, where the
// Python loop runs about ten small tensor ops. It computes forward_steps / backward_steps of
// lstm_kernel.py; tests/test_lstm_cpu.py holds it to them. Where the kernel runs, it also computes
// the layer's masked input projection and the gradients of its input and weights.
//
// Shapes the loops index, S models (a lone model comes without S; `Models` adds it), G = 4 untied
// recurrent masks or 1:
//   x_proj (T, S, B, 4H), overwritten by acts   h0, c0 (S, B, H)   weight (S, 4H, H)   bias (S, 4H) = b_ih + b_hh
//   z_h (T|1, S, G, B, H) or None        z_c (T|1, S, B, H) or None
//   states (S, G, T, B, H), rows strided, or None: h_{t-1} * z_h[t], written for the backward
// The forward's recurrent product runs per model as one (B, H) x (H, 4H) product, or per gate as
// four (B, H) x (H, H) products (`per_gate`, always when untied): lstm_cpu.py picks the faster.
// The backward's runs per gate at every size: four (B, H) x (H, H) products batched over the gates
// beat one (B, 4H) x (4H, H) product (2-core Xeon, batch 20: 0.86x the time at hidden 200, 0.94x at 650).
// Threads (built with -fopenmp): either each thread runs every step of its own batch rows
// (`split_rows`, where W_hh fits in half of L2), or each step's product goes to MKL's threads and
// the element-wise passes between products split their rows over ATen's. The split-row loops run
// their products in the AVX-512 kernel below where the build has it (-march=native) and the model
// is float32.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <tuple>
#include <type_traits>
#include <vector>

// MKL's batched product (one group of equal shapes; 101 = row-major, 111 = no transpose), which
// ATen's products call in PyTorch's x86 builds. Called straight, it skips ATen's per-call cost
// (tensor views, dispatch) at every step: one layer at batch 20 on 2 cores, forward + backward,
// 1.02-1.05x faster at hidden 200 and 650. Declared weak: null where torch's BLAS is not MKL, and
// the products then go through ATen (as they do with products("aten"), which the tests use to
// check that path).
extern "C" {
void cblas_sgemm_batch(int, const int*, const int*, const int*, const int*, const int*, const float*, const float**,
                       const int*, const float**, const int*, const float*, float**, const int*, int, const int*) __attribute__((weak));
void cblas_dgemm_batch(int, const int*, const int*, const int*, const int*, const int*, const double*, const double**,
                       const int*, const double**, const int*, const double*, double**, const int*, int, const int*) __attribute__((weak));
}

namespace {

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// Rows per thread at least. Splitting 20 rows over 2 cores already pays at hidden 64 (forward gate
// pass 5.4 -> 4.3 us per step; 15.7 -> 9.9 us at 200); below ~512 elements a thread's share stays serial.
inline int64_t row_grain(int64_t hidden) { return std::max<int64_t>(1, 512 / hidden); }

// Rows per thread at least where whole time loops split their rows (`split_rows`). A row's
// recurrence depends on no other row, so each thread can run every step of its own rows, with its
// own one-thread products, and never wait for the others. Where W_hh sits in a core's L2 this beats
// one product over all rows split by MKL: 2-core Xeon, hidden 200, 10 rows on one thread take 26.0
// us per step against 26.6 for 20 rows on two, and the per-step hand-overs between threads go.
// Below ~8 rows a thread's product runs too far under the core's peak.
constexpr int64_t kSplitRows = 8;

// A mask (T|1, S, G|1, B, C), given with a model dimension, spelled out over S and B (contiguous):
// the row of step t, model s, gate k, batch row b, or nullptr for no mask. A mask with one step
// serves every step, a tied one every gate.
template <typename T>
struct MaskRows {
  at::Tensor held;
  const T* z = nullptr;
  int64_t steps = 1, S = 1, gates = 1, B = 1, C = 0;
  MaskRows(const c10::optional<at::Tensor>& mask, int64_t models, int64_t batch) {
    if (!mask.has_value()) return;
    held = mask->expand({mask->size(0), models, mask->size(2), batch, mask->size(4)}).contiguous();
    z = held.data_ptr<T>(), steps = held.size(0), S = models, gates = held.size(2), B = batch, C = held.size(4);
  }
  const T* row(int64_t t, int64_t s, int64_t k, int64_t b) const {
    return z ? z + ((((steps > 1 ? t : 0) * S + s) * gates + (gates > 1 ? k : 0)) * B + b) * C : nullptr;
  }
};

// The time loops' masks: z_h (T|1, S, G|1, B, H), z_c (T|1, S, B, H).
template <typename T>
struct Masks {
  MaskRows<T> h, c;
  Masks(const c10::optional<at::Tensor>& z_h, const c10::optional<at::Tensor>& z_c, int64_t S, int64_t B)
      : h(z_h, S, B), c(z_c.has_value() ? c10::optional<at::Tensor>(z_c->unsqueeze(2)) : c10::nullopt, S, B) {}
  // The mask of model s's gate k (B, H) at step t.
  const T* recurrent(int64_t t, int64_t s, int64_t k) const { return h.row(t, s, k, 0); }
  // Step t's cell masks (S, B, H).
  const T* cell(int64_t t) const { return c.row(t, 0, 0, 0); }
};

// What runs the products: the kernel below (in the split-row loops of float32 models, where the
// build has AVX-512; MKL elsewhere), MKL called straight, or ATen (which runs them where torch's
// BLAS is not MKL). The tests run each.
enum class Products { kernel, blas, aten };
Products products_by = Products::kernel;

// count products C_i (M, N) = A_i (M, K) B_i (K, N), row-major, A_i = A + i * a_step (rows lda
// apart), B_i = B + i * b_step (ldb), C_i = C + i * c_step (ldc), in one call: a call per product
// wakes MKL's threads each time (four per step ran untied layers 1.10x slower at hidden 200).
template <typename T>
void batched_matmul_rows(int64_t count, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, int64_t a_step,
                         const T* B, int64_t ldb, int64_t b_step, T* C, int64_t ldc, int64_t c_step) {
  auto batch = std::is_same<T, float>::value ? reinterpret_cast<void*>(&cblas_sgemm_batch) : reinterpret_cast<void*>(&cblas_dgemm_batch);
  if (batch && products_by != Products::aten) {
    using fn = void (*)(int, const int*, const int*, const int*, const int*, const int*, const T*, const T**, const int*,
                        const T**, const int*, const T*, T**, const int*, int, const int*);
    std::vector<const T*> a(count), b(count);
    std::vector<T*> c(count);
    for (int64_t i = 0; i < count; ++i) a[i] = A + i * a_step, b[i] = B + i * b_step, c[i] = C + i * c_step;
    const int no_transpose = 111, m = M, n = N, k = K, la = lda, lb = ldb, lc = ldc, size = count;
    const T one = 1, zero = 0;
    reinterpret_cast<fn>(batch)(101, &no_transpose, &no_transpose, &m, &n, &k, &one, a.data(), &la, b.data(), &lb, &zero,
                                c.data(), &lc, 1, &size);
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto c = at::from_blob(C, {count, M, N}, {c_step, ldc, 1}, options);
  at::bmm_out(c, at::from_blob(const_cast<T*>(A), {count, M, K}, {a_step, lda, 1}, options),
              at::from_blob(const_cast<T*>(B), {count, K, N}, {b_step, ldb, 1}, options));
}

// Where step t's masked previous state h_{t-1} * z_h[t] lives, copy k of model s (B rows, `row` apart):
// the layer's saved buffer (`states`, read again by the backward's weight gradient), or else a
// scratch buffer of one step. Copy k is gate k's input when untied; a tied mask makes one copy.
template <typename T>
struct MaskedStates {
  T* base;
  int64_t row, copy, model, step, copies;
  T* at(int64_t t, int64_t s, int64_t k) const { return base + s * model + k * copy + t * step; }
};

// W^T laid out contiguously, once per chunk: MKL runs the plain product with B = 20 rows faster than
// the transposed one (forward 15% faster at hidden 200, 1.5% at 650). One product per model:
// (S, H, 4H); per gate: (S*4, H, H).
at::Tensor transposed_weight(const at::Tensor& weight, int64_t products) {
  const auto S = weight.size(0), H = weight.size(2);
  return products == 1 ? weight.transpose(1, 2).contiguous() : weight.view({S * 4, H, H}).transpose(1, 2).contiguous();
}

// The split-row loops' step products, written for AVX-512. A thread's product at batch 20 on 2
// cores is (10, H) x (H, 4H), too few rows for MKL to reach the core's peak, and untied it is four
// (10, H) x (H, H) products, slower still. One thread, hidden 200, 10 rows, caches warm: one
// product 14.9 us here against 17.1 for MKL's packed product (cblas_sgemm_compute) and 18.8 batched;
// four per gate 16.7 us against 21.9 batched. A tile of up to 12 rows x 32 columns of the result
// stays in 24 of the 32 vector registers while K steps each load two vectors of B and broadcast one
// value of A per row; B is laid out once per call in panels the tile reads front to back.
// C_g (rows, N) = z_g * A_g (rows, K) B_g for one model's blocks g, A_g = a + g a_step (rows lda
// apart) and C_g = c + g c_step (ldc); or, with `sum`, C = sum_g z_g * A_g B_g. z_g (rows, N), ldz
// apart, or nullptr for no mask (the forward's products have none).
struct Product {
  const float* panels;
  int64_t blocks, K, N;
  const float* a;
  int64_t lda, a_step;
  float* c;
  int64_t ldc, c_step;
  bool sum;
  std::array<const float*, 4> z;
  int64_t ldz;
};

#if defined(__AVX512F__)
constexpr bool kKernelBuilt = true;
constexpr int kTileRows = 12;

// Each model's B_g (K, N), g < G, in panels of 32 columns (the last one 16 where N rounded up to
// 16 leaves that), each panel K rows of its columns, zero past N: (S, G, K * N16), N16 = N rounded
// up to 16. B_g[i, j] = W[g N + j, i] where `transposed` (the forward's W^T, W (S, G N, K)),
// else W[g K + i, j] (the backward's W_k, W (S, G K, N)).
at::Tensor panels(const at::Tensor& weight, int64_t G, int64_t K, int64_t N, bool transposed) {
  const int64_t S = weight.size(0), padded = (N + 15) / 16 * 16, per_block = (padded + 31) / 32;
  auto out = at::empty({S, G, K * padded}, weight.options());
  const float* w = weight.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, S * G * per_block, 1, [&](int64_t first, int64_t last) {
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t block = unit / per_block, j0 = unit % per_block * 32, width = std::min<int64_t>(32, padded - j0);
      const float* w_block = w + block * N * K;  // block = s * G + g
      float* panel = o + block * K * padded + j0 * K;
      const int64_t columns = std::min(width, N - j0);
      if (columns < width) std::fill(panel, panel + K * width, 0.f);
      if (transposed) {  // W's rows j0.. become columns: reads in order, writes within the panel (in L1)
        for (int64_t j = 0; j < columns; ++j) {
          const float* w_row = w_block + (j0 + j) * K;
          for (int64_t i = 0; i < K; ++i) panel[i * width + j] = w_row[i];
        }
      } else {
        for (int64_t i = 0; i < K; ++i) std::copy(w_block + i * N + j0, w_block + i * N + j0 + columns, panel + i * width);
      }
    }
  });
  return out;
}

// R rows x V vectors of 16 columns of block g, from column j0; `tail` masks the last vector's columns past N.
template <int R, int V>
void tile(const Product& p, int64_t g, const float* a, const float* panel, float* c, const float* z, int64_t j0, __mmask16 tail) {
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t i = 0; i < p.K; ++i) {
    __m512 b[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) b[v] = _mm512_loadu_ps(panel + (i * V + v) * 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * p.lda + i]);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
    }
  }
  const bool add = p.sum && g > 0;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      const __mmask16 m = v == V - 1 ? tail : __mmask16(0xFFFF);
      const int64_t j = j0 + 16 * v;
      __m512 y = acc[r][v];
      if (z) y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, z + r * p.ldz + j));
      if (add) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, c + r * p.ldc + j));
      _mm512_mask_storeu_ps(c + r * p.ldc + j, m, y);
    }
  }
}

template <int R>
void row_block(const Product& p, int64_t row0) {
  const int64_t padded = (p.N + 15) / 16 * 16;
  for (int64_t g = 0; g < p.blocks; ++g) {
    const float* a = p.a + g * p.a_step + row0 * p.lda;
    float* c = p.c + (p.sum ? 0 : g * p.c_step) + row0 * p.ldc;
    const float* z = p.z[g] ? p.z[g] + row0 * p.ldz : nullptr;
    const float* panels = p.panels + g * p.K * padded;
    for (int64_t j0 = 0; j0 < padded; j0 += 32) {
      const int64_t past = p.N - j0 - (padded - j0 >= 32 ? 16 : 0);  // columns of the last vector
      const auto tail = __mmask16(past >= 16 ? 0xFFFF : (1u << past) - 1);
      if (padded - j0 >= 32) {
        tile<R, 2>(p, g, a, panels + j0 * p.K, c, z, j0, tail);
      } else {
        tile<R, 1>(p, g, a, panels + j0 * p.K, c, z, j0, tail);
      }
    }
  }
}

template <int... R>
constexpr std::array<void (*)(const Product&, int64_t), sizeof...(R)> row_blocks(std::integer_sequence<int, R...>) {
  return {&row_block<R + 1>...};
}

// The product for `rows` rows, in row blocks of at most kTileRows, as even as they divide.
void kernel_product(const Product& p, int64_t rows) {
  static constexpr auto by_rows = row_blocks(std::make_integer_sequence<int, kTileRows>());
  const int64_t count = (rows + kTileRows - 1) / kTileRows;
  for (int64_t q = 0; q < count; ++q) {
    const int64_t first = q * rows / count, last = (q + 1) * rows / count;
    by_rows[last - first - 1](p, first);
  }
}

// The weight gradient's products: C (R, V*16 columns, ldc apart) = sum over `count` rows n of
// A[n, :] Y[n, :]: A packed R values per row (a + n R), Y 32 per row (y + n 32, masked inputs).
template <int R, int V>
void gradient_tile(const float* a, int64_t count, const float* y, float* c, int64_t ldc, __mmask16 tail) {
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t n = 0; n < count; ++n) {
    __m512 y_n[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) y_n[v] = _mm512_loadu_ps(y + n * 32 + v * 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[n * R + r]);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x, y_n[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(c + r * ldc + v * 16, v == V - 1 ? tail : __mmask16(0xFFFF), acc[r][v]);
  }
}

using GradientTile = void (*)(const float*, int64_t, const float*, float*, int64_t, __mmask16);
template <int V, int... R>
constexpr std::array<GradientTile, sizeof...(R)> gradient_tiles(std::integer_sequence<int, R...>) {
  return {&gradient_tile<R + 1, V>...};
}

// R rows of C for one panel of `width` <= 32 columns, A packed as gradient_tile takes it.
void gradient_panel(int64_t R, int64_t width, const float* a, int64_t count, const float* y, float* c, int64_t ldc) {
  static constexpr auto one = gradient_tiles<1>(std::make_integer_sequence<int, kTileRows>());
  static constexpr auto two = gradient_tiles<2>(std::make_integer_sequence<int, kTileRows>());
  const int64_t last = width > 16 ? width - 16 : width;
  (width > 16 ? two : one)[R - 1](a, count, y, c, ldc, __mmask16(last >= 16 ? 0xFFFF : (1u << last) - 1));
}
#else
constexpr bool kKernelBuilt = false;  // the split-row loops call MKL
at::Tensor panels(const at::Tensor&, int64_t, int64_t, int64_t, bool) { TORCH_CHECK(false, "built without AVX-512"); }
void kernel_product(const Product&, int64_t) { TORCH_CHECK(false, "built without AVX-512"); }
#endif

template <typename T>
bool runs_kernel(bool split_rows) {
  return kKernelBuilt && split_rows && std::is_same<T, float>::value && products_by == Products::kernel;
}

template <typename T>
void forward_loop(at::Tensor& gates, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& weight,
                  const at::Tensor& bias, const c10::optional<at::Tensor>& z_h_opt, const c10::optional<at::Tensor>& z_c_opt,
                  int64_t P, bool split_rows, const c10::optional<at::Tensor>& states_opt, at::Tensor& out, at::Tensor& cells,
                  at::Tensor& tanh_c) {
  const int64_t steps = gates.size(0), S = gates.size(1), B = gates.size(2), H = gates.size(3) / 4;
  const Masks<T> masks(z_h_opt, z_c_opt, S, B);
  const T* b_hh = bias.data_ptr<T>();
  T* gates_all = gates.data_ptr<T>();
  T* c_out = cells.data_ptr<T>();
  T* tc_out = tanh_c.data_ptr<T>();
  T* h_out = out.data_ptr<T>();

  // The layer's buffer may hold a copy per gate where only its input masks are untied.
  const int64_t copies = states_opt.has_value() ? states_opt->size(1) : masks.h.gates;
  at::Tensor scratch;
  MaskedStates<T> states;
  if (states_opt.has_value()) {  // (S, G, T, B, H), rows strided: a slice of the layer's buffer
    const auto& st = *states_opt;
    states = {st.data_ptr<T>(), st.stride(3), st.stride(1), st.stride(0), st.stride(2), copies};
  } else {
    scratch = at::empty({S, copies, B, H}, gates.options());
    states = {scratch.data_ptr<T>(), H, B * H, copies * B * H, 0, copies};
  }
  auto rec = P == 1 ? at::empty({S, B, 4 * H}, gates.options()) : at::empty({S, 4, B, H}, gates.options());
  cells[0].copy_(c0);
  // Row `row` = s * B + b of h (H values) into step t's masked states, each copy k with its mask.
  auto mask_row = [&](const T* h, int64_t t, int64_t row) {
    const int64_t s = row / B, b = row % B;
    for (int64_t k = 0; k < copies; ++k) {
      const T* z = masks.recurrent(t, s, k);
      T* to = states.at(t, s, k) + b * states.row;
      if (z) {
        z += b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) to[j] = h[j] * z[j];
      } else {
        std::copy(h, h + H, to);
      }
    }
  };
  auto h0c = h0.contiguous();
  for (int64_t row = 0; row < S * B; ++row) mask_row(h0c.data_ptr<T>() + row * H, 0, row);

  const bool own_kernel = runs_kernel<T>(split_rows);
  const int64_t N = P == 1 ? 4 * H : H;  // one product per model, or one per gate
  const auto weight_t = own_kernel ? panels(weight, P, H, N, true) : transposed_weight(weight, P);
  const T* w = weight_t.data_ptr<T>();
  T* r = rec.data_ptr<T>();
  const int64_t a_step = copies > 1 ? states.copy : 0;  // gate k reads copy k, or the one tied copy
  auto kernel_rows = [&](int64_t t, int64_t first, int64_t last) {
    for (int64_t s = first / B; s * B < last; ++s) {
      const int64_t b0 = std::max(first, s * B) - s * B, b1 = std::min(last, (s + 1) * B) - s * B;
      const Product product{reinterpret_cast<const float*>(w) + s * weight_t.stride(0), P, H, N,
                            reinterpret_cast<const float*>(states.at(t, s, 0) + b0 * states.row), states.row, a_step,
                            reinterpret_cast<float*>(r + (s * P * B + b0) * N), N, B * N, false, {}, 0};
      kernel_product(product, b1 - b0);
    }
  };
  // Step t's recurrent product for rows [first, last) into rec: one product rec (S, B, 4H) = h W^T,
  // or per gate rec (S, 4, B, H) = (h z_k) W_k^T.
  auto product_rows = [&](int64_t t, int64_t first, int64_t last) {
    if (first == 0 && last == S * B && (S == 1 || states.model == P * a_step)) {  // all inputs equally spaced: one call
      batched_matmul_rows<T>(S * P, B, N, H, states.at(t, 0, 0), states.row, a_step, w, N, H * N, r, N, B * N);
      return;
    }
    for (int64_t s = first / B; s * B < last; ++s) {
      const int64_t b0 = std::max(first, s * B) - s * B, b1 = std::min(last, (s + 1) * B) - s * B;
      batched_matmul_rows<T>(P, b1 - b0, N, H, states.at(t, s, 0) + b0 * states.row, states.row, a_step, w + s * P * H * N, N,
                             H * N, r + (s * P * B + b0) * N, N, B * N);
    }
  };
  auto gate_rows = [&](int64_t t, int64_t first, int64_t last) {
    const T* zc_t = masks.cell(t);
    for (int64_t row = first; row < last; ++row) {  // row = s * B + b
      const int64_t s = row / B, b = row % B;
      const T* bias_s = b_hh + s * 4 * H;
      T* a = gates_all + (t * S * B + row) * 4 * H;  // the step's input projection, then its activations
      const T* c_prev = c_out + (t * S * B + row) * H;
      T* c_new = c_out + ((t + 1) * S * B + row) * H;
      T* tc = tc_out + (t * S * B + row) * H;
      T* h = h_out + (t * S * B + row) * H;
      const T* zc_row = zc_t ? zc_t + row * H : nullptr;
      // Gate k's recurrent term: one product rec[s, b, k*H + j]; per gate rec[s, k, b, j].
      const int64_t gate_stride = P == 1 ? H : B * H;
      const T* r_row = P == 1 ? r + row * 4 * H : r + (s * 4 * B + b) * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(a[j] + bias_s[j] + r_row[j]);
        const T f = sigmoid(a[H + j] + bias_s[H + j] + r_row[gate_stride + j]);
        const T g = std::tanh(a[2 * H + j] + bias_s[2 * H + j] + r_row[2 * gate_stride + j]);
        const T o = sigmoid(a[3 * H + j] + bias_s[3 * H + j] + r_row[3 * gate_stride + j]);
        T c = f * c_prev[j] + i * g;
        if (zc_row) c *= zc_row[j];
        const T tanh_cell = std::tanh(c);
        a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = o;
        c_new[j] = c;
        tc[j] = tanh_cell;
        h[j] = o * tanh_cell;
      }
      if (t + 1 < steps) mask_row(h, t + 1, row);  // the next product's input, while the row is in cache
    }
  };
  if (split_rows) {  // each thread runs all steps of its own rows: no wait between threads at any step
    at::parallel_for(0, S * B, kSplitRows, [&](int64_t first, int64_t last) {
      for (int64_t t = 0; t < steps; ++t) {
        if (own_kernel) {
          kernel_rows(t, first, last);
        } else {
          product_rows(t, first, last);
        }
        gate_rows(t, first, last);
      }
    });
    return;
  }
  for (int64_t t = 0; t < steps; ++t) {
    product_rows(t, 0, S * B);
    at::parallel_for(0, S * B, row_grain(H), [&](int64_t first, int64_t last) { gate_rows(t, first, last); });
  }
}

template <typename T>
void backward_loop(const at::Tensor& d_out, at::Tensor& dh, at::Tensor& dc, const at::Tensor& weight, const at::Tensor& acts,
                   const at::Tensor& cells, const at::Tensor& tanh_c, const c10::optional<at::Tensor>& z_h_opt,
                   const c10::optional<at::Tensor>& z_c_opt, bool split_rows, at::Tensor& d_pre, at::Tensor& d_bias) {
  const int64_t steps = acts.size(0), S = acts.size(1), B = acts.size(2), H = acts.size(3) / 4;
  const Masks<T> masks(z_h_opt, z_c_opt, S, B);
  const T* dout = d_out.data_ptr<T>();
  const T* a_all = acts.data_ptr<T>();
  const T* c_all = cells.data_ptr<T>();
  const T* tc_all = tanh_c.data_ptr<T>();
  T* dp_all = d_pre.data_ptr<T>();
  T* dh_p = dh.data_ptr<T>();
  T* dc_p = dc.data_ptr<T>();
  // d_bias = sum of d_pre over steps and rows, summed by each thread while its rows are in cache
  // (a pass over d_pre less: 0.09 ms of a layer's backward at hidden 200), then over the threads.
  auto bias_parts = at::zeros({at::get_num_threads(), S, 4 * H}, acts.options());
  T* bias_parts_p = bias_parts.data_ptr<T>();

  // rec (S, 4, B, H): gate k's block of d_pre[t] times W_k.
  auto rec = at::empty({S, 4, B, H}, acts.options());
  const T* w_all = weight.data_ptr<T>();
  T* rec_all = rec.data_ptr<T>();
  auto gate_rows = [&](int64_t t, int64_t first, int64_t last) {
    const T* zc_t = masks.cell(t);
    T* bias_part = bias_parts_p + at::get_thread_num() * S * 4 * H;
    for (int64_t row = first; row < last; ++row) {
      T* db = bias_part + row / B * 4 * H;
      const T* a = a_all + (t * S * B + row) * 4 * H;
      const T* c_prev = c_all + (t * S * B + row) * H;
      const T* tc = tc_all + (t * S * B + row) * H;
      const T* d_o = dout + (t * S * B + row) * H;
      const T* zc_row = zc_t ? zc_t + row * H : nullptr;
      T* dp = dp_all + (t * S * B + row) * 4 * H;
      T* dh_row = dh_p + row * H;
      T* dc_row = dc_p + row * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        const T dh_t = dh_row[j] + d_o[j];
        T dc_t = dc_row[j] + dh_t * o * (T(1) - tc[j] * tc[j]);
        if (zc_row) dc_t *= zc_row[j];
        dp[j] = dc_t * g * i * (T(1) - i);
        dp[H + j] = dc_t * c_prev[j] * f * (T(1) - f);
        dp[2 * H + j] = dc_t * i * (T(1) - g * g);
        dp[3 * H + j] = dh_t * tc[j] * o * (T(1) - o);
        dc_row[j] = dc_t * f;
      }
#pragma omp simd
      for (int64_t j = 0; j < 4 * H; ++j) db[j] += dp[j];
    }
  };
  // Gate k's block of d_pre[t] (rows 4H apart) times W_k (H, H), for rows [first, last) of every model.
  auto product_rows = [&](int64_t t, int64_t first, int64_t last) {
    for (int64_t s = first / B; s * B < last; ++s) {
      const int64_t b0 = std::max(first, s * B) - s * B, b1 = std::min(last, (s + 1) * B) - s * B;
      batched_matmul_rows<T>(4, b1 - b0, H, H, dp_all + ((t * S + s) * B + b0) * 4 * H, 4 * H, H, w_all + s * 4 * H * H, H, H * H,
                             rec_all + (s * 4 * B + b0) * H, H, B * H);
    }
  };
  // dh of h_{t-1} = sum_k rec_k * z_h[t]_k
  auto carry_rows = [&](int64_t t, int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const int64_t s = row / B, b = row % B;
      T* dh_row = dh_p + row * H;
      std::fill(dh_row, dh_row + H, T(0));
      for (int64_t k = 0; k < 4; ++k) {
        const T* z = masks.recurrent(t, s, k);
        const T* r_k = rec_all + ((s * 4 + k) * B + b) * H;
        if (z) {
          z += b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dh_row[j] += r_k[j] * z[j];
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dh_row[j] += r_k[j];
        }
      }
    }
  };
  // The same in one pass: dh rows = sum_k z_h[t]_k * (gate k's block of d_pre[t]) W_k.
  const bool own_kernel = runs_kernel<T>(split_rows);
  const auto w_panels = own_kernel ? panels(weight, 4, H, H, false) : at::Tensor();
  auto kernel_rows = [&](int64_t t, int64_t first, int64_t last) {
    for (int64_t s = first / B; s * B < last; ++s) {
      const int64_t b0 = std::max(first, s * B) - s * B, b1 = std::min(last, (s + 1) * B) - s * B;
      std::array<const float*, 4> z{};
      for (int64_t k = 0; k < 4; ++k) {
        const T* z_k = masks.recurrent(t, s, k);
        z[k] = z_k ? reinterpret_cast<const float*>(z_k + b0 * H) : nullptr;
      }
      const Product product{w_panels.data_ptr<float>() + s * w_panels.stride(0), 4, H, H,
                            reinterpret_cast<const float*>(dp_all + ((t * S + s) * B + b0) * 4 * H), 4 * H, H,
                            reinterpret_cast<float*>(dh_p + (s * B + b0) * H), H, 0, true, z, H};
      kernel_product(product, b1 - b0);
    }
  };
  if (split_rows) {  // as in the forward: each thread runs all steps of its own rows
    at::parallel_for(0, S * B, kSplitRows, [&](int64_t first, int64_t last) {
      for (int64_t t = steps - 1; t >= 0; --t) {
        gate_rows(t, first, last);
        if (own_kernel) {
          kernel_rows(t, first, last);
        } else {
          product_rows(t, first, last);
          carry_rows(t, first, last);
        }
      }
    });
  } else {
    for (int64_t t = steps - 1; t >= 0; --t) {
      at::parallel_for(0, S * B, row_grain(H), [&](int64_t first, int64_t last) { gate_rows(t, first, last); });
      product_rows(t, 0, S * B);
      at::parallel_for(0, S * B, row_grain(H), [&](int64_t first, int64_t last) { carry_rows(t, first, last); });
    }
  }
  at::sum_out(d_bias, bias_parts, 0);
}

// The masked input's gradient, sum_k parts_k * z_k, in one pass: parts (S, G, T, B, I) holds gate
// k's d_pre_k W_k, mask (T|1, S, G|1, B, I) (one mask serves every gate), sum (T, S, B, I). Masking
// four untied parts in place and then summing over the gates read and wrote them twice (0.25
// against 0.06 ms at hidden 200).
template <typename T>
void masked_gate_sum_loop(const at::Tensor& parts, const at::Tensor& mask, at::Tensor& sum) {
  const int64_t S = parts.size(0), G = parts.size(1), steps = parts.size(2), B = parts.size(3), I = parts.size(4);
  const MaskRows<T> z(mask, S, B);
  const T* p_all = parts.data_ptr<T>();
  T* out_all = sum.data_ptr<T>();
  at::parallel_for(0, steps * S * B, row_grain(I), [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {  // row = (t * S + s) * B + b
      const int64_t t = row / (S * B), s = row / B % S, b = row % B;
      T* to = out_all + row * I;
      for (int64_t k = 0; k < G; ++k) {
        const T* p = p_all + (((s * G + k) * steps + t) * B + b) * I;
        const T* z_k = z.row(t, s, k, b);
        if (k == 0) {
#pragma omp simd
          for (int64_t j = 0; j < I; ++j) to[j] = p[j] * z_k[j];
        } else {
#pragma omp simd
          for (int64_t j = 0; j < I; ++j) to[j] += p[j] * z_k[j];
        }
      }
    }
  });
}

}  // namespace

// The loops index every tensor with a model dimension S, masks spelled out over it, in the model's
// dtype and contiguous. A lone model (weight (4H, H)) comes without it: it is added here and taken
// off the results, in C++ rather than Python, where the dozen view calls around each loop cost
// 50-60 us a call once the loop has left the caches cold.
struct Models {
  bool lone;
  at::ScalarType dtype;
  at::Tensor operator()(const at::Tensor& t, int64_t dim) const { return (lone ? t.unsqueeze(dim) : t).to(dtype).contiguous(); }
  c10::optional<at::Tensor> operator()(const c10::optional<at::Tensor>& t, int64_t dim) const {
    return t.has_value() ? c10::optional<at::Tensor>((*this)(*t, dim)) : c10::nullopt;
  }
  at::Tensor out(const at::Tensor& t, int64_t dim) const { return lone ? t.squeeze(dim) : t; }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& x_proj_in, const at::Tensor& h0_in, const at::Tensor& c0_in, const at::Tensor& weight_in,
    const at::Tensor& bias_in, const c10::optional<at::Tensor>& z_h_in, const c10::optional<at::Tensor>& z_c_in, bool per_gate,
    bool split_rows, const c10::optional<at::Tensor>& states_in) {
  const Models models{weight_in.dim() == 2, x_proj_in.scalar_type()};
  const auto x_proj = models(x_proj_in, 1), h0 = models(h0_in, 0), c0 = models(c0_in, 0), weight = models(weight_in, 0),
             bias = models(bias_in, 0);
  const auto steps = x_proj.size(0), S = x_proj.size(1), B = x_proj.size(2), H = x_proj.size(3) / 4;
  const auto z_h = models(z_h_in, 1), z_c = models(z_c_in, 1);
  const int64_t products = per_gate || (z_h.has_value() && z_h->size(2) > 1) ? 4 : 1;  // untied: always per gate
  c10::optional<at::Tensor> states;  // strided rows: given a model dimension, never copied
  if (states_in.has_value()) {
    states = models.lone ? states_in->unsqueeze(0) : *states_in;
    const int64_t mask_gates = z_h.has_value() ? z_h->size(2) : 1, copies = states->size(1);
    TORCH_CHECK(states->sizes() == at::IntArrayRef({S, copies, steps, B, H}) && states->stride(4) == 1 &&
                    states->scalar_type() == x_proj.scalar_type() && (copies == mask_gates || (mask_gates == 1 && copies == 4)),
                "states must be ([S,] G, T, B, H) with unit stride along H, G the recurrent masks' gates or 4");
  }
  auto out = at::empty({steps, S, B, H}, x_proj.options());
  // The activations overwrite the projection they are computed from: a pass over fresh memory
  // less, 0.9 ms of a 19 ms layer forward at hidden 650 (lstm_cpu.py consumes x_proj).
  auto acts = x_proj;
  auto cells = at::empty({steps + 1, S, B, H}, x_proj.options());
  auto tanh_c = at::empty({steps, S, B, H}, x_proj.options());
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "lstm_cpu_forward", [&] {
    forward_loop<scalar_t>(acts, h0, c0, weight, bias, z_h, z_c, products, split_rows, states, out, cells, tanh_c);
  });
  return {models.out(out, 1), models.out(acts, 1), models.out(cells, 1), models.out(tanh_c, 1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& d_out_in, const at::Tensor& dh_in, const at::Tensor& dc_in, const at::Tensor& weight_in,
    const at::Tensor& acts_in, const at::Tensor& cells_in, const at::Tensor& tanh_c_in, const c10::optional<at::Tensor>& z_h_in,
    const c10::optional<at::Tensor>& z_c_in, bool split_rows) {
  const Models models{weight_in.dim() == 2, acts_in.scalar_type()};
  const auto d_out = models(d_out_in, 1), acts = models(acts_in, 1), cells = models(cells_in, 1), tanh_c = models(tanh_c_in, 1),
             weight = models(weight_in, 0);
  const auto z_h = models(z_h_in, 1), z_c = models(z_c_in, 1);
  auto d_pre = at::empty_like(acts);
  auto dh_carry = models(dh_in, 0).clone(at::MemoryFormat::Contiguous);
  auto dc_carry = models(dc_in, 0).clone(at::MemoryFormat::Contiguous);
  auto d_bias = at::empty({acts.size(1), acts.size(3)}, acts.options());
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_cpu_backward", [&] {
    backward_loop<scalar_t>(d_out, dh_carry, dc_carry, weight, acts, cells, tanh_c, z_h, z_c, split_rows, d_pre, d_bias);
  });
  return {models.out(d_pre, 1), models.out(dh_carry, 0), models.out(dc_carry, 0), models.out(d_bias, 0)};
}

// parts ([S,] G, T, B, I), mask (T|1, [S,] G|1, B, I): sum_k parts_k * mask_k, (T, [S,] B, I).
at::Tensor masked_gate_sum(const at::Tensor& parts_in, const at::Tensor& mask_in) {
  const Models models{parts_in.dim() == 4, parts_in.scalar_type()};
  const auto parts = models(parts_in, 0), mask = models(mask_in, 1);
  TORCH_CHECK(parts.dim() == 5 && mask.dim() == 5 && mask.size(1) == parts.size(0) &&
                  (mask.size(2) == parts.size(1) || mask.size(2) == 1) && mask.size(3) == parts.size(3) && mask.size(4) == parts.size(4),
              "parts must be ([S,] G, T, B, I) and mask (T|1, [S,] G|1, B, I)");
  auto sum = at::empty({parts.size(2), parts.size(0), parts.size(3), parts.size(4)}, parts.options());
  AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "lstm_cpu_masked_gate_sum", [&] { masked_gate_sum_loop<scalar_t>(parts, mask, sum); });
  return models.out(sum, 1);
}

// Where the whole layer runs in the kernel (lstm_kernel.py: float32, W_ih and W_hh small enough
// for split rows), the masks are applied inside its products, and no copies of the masked inputs
// and states are saved for the backward: the projection masks each row into a few kB of L1 just
// before projecting it, and the weight gradient masks its inputs the same way as it reads them.
// Untied, the saved copies were four of x and of h_{t-1}, written once per chunk and read again.
// A training step of the small PTB model (hidden 200, 2 layers, batch 20; 2-core Xeon), the same
// model both ways in one process: untied 56.3 -> 55.4 ms and 56.5 -> 55.8 ms in two runs, tied
// 55.0 -> 55.1 and 55.4 -> 54.8 (MKL's weight gradient from one saved copy is about as fast).
#if defined(__AVX512F__)
// x_proj (T, [S,] B, 4H) = mask(x) W^T, gate k's columns from x * z_x^k: x (T, [S,] B, I),
// z_x None or (T|1, [S,] G|1, B, I), weight ([S,] 4H, I).
at::Tensor masked_projection(const at::Tensor& x_in, const c10::optional<at::Tensor>& z_in, const at::Tensor& weight_in) {
  const Models models{weight_in.dim() == 2, at::kFloat};
  const auto x = models(x_in, 1), weight = models(weight_in, 0);
  const int64_t steps = x.size(0), S = x.size(1), B = x.size(2), I = x.size(3), width = weight.size(1);
  const MaskRows<float> z(models(z_in, 1), S, B);
  const int64_t P = z.gates, N = width / P;  // untied: a block of columns per gate
  const auto w_panels = panels(weight, P, I, N, true);
  auto x_proj = at::empty({steps, S, B, width}, x.options());
  const float* x_p = x.data_ptr<float>();
  float* out = x_proj.data_ptr<float>();
  const int64_t blocks = (B + kTileRows - 1) / kTileRows;  // row blocks of one step and model
  at::parallel_for(0, steps * S * blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> masked(z.z ? P * kTileRows * I : 0);
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t t = unit / blocks / S, s = unit / blocks % S, q = unit % blocks;
      const int64_t b0 = q * B / blocks, b1 = (q + 1) * B / blocks;
      const float* a = x_p + ((t * S + s) * B + b0) * I;
      if (z.z) {
        for (int64_t k = 0; k < P; ++k) {
          for (int64_t b = b0; b < b1; ++b) {
            const float* from = x_p + ((t * S + s) * B + b) * I;
            const float* z_k = z.row(t, s, k, b);
            float* to = masked.data() + (k * kTileRows + b - b0) * I;
#pragma omp simd
            for (int64_t i = 0; i < I; ++i) to[i] = from[i] * z_k[i];
          }
        }
        a = masked.data();
      }
      const Product product{w_panels.data_ptr<float>() + s * w_panels.stride(0), P, I, N, a, I, kTileRows * I,
                            out + ((t * S + s) * B + b0) * width, width, N, false, {}, 0};
      kernel_product(product, b1 - b0);
    }
  });
  return models.out(x_proj, 1);
}

// d_x (T, [S,] B, I) = sum_k z_x^k * d_pre_k W_ih_k: d_pre (T, [S,] B, 4H), weight ([S,] 4H, I).
at::Tensor masked_input_gradient(const at::Tensor& d_pre_in, const at::Tensor& weight_in, const c10::optional<at::Tensor>& z_in) {
  const Models models{weight_in.dim() == 2, at::kFloat};
  const auto d_pre = models(d_pre_in, 1), weight = models(weight_in, 0);
  const int64_t steps = d_pre.size(0), S = d_pre.size(1), B = d_pre.size(2), width = d_pre.size(3), H = width / 4, I = weight.size(2);
  const MaskRows<float> z(models(z_in, 1), S, B);
  const auto w_panels = panels(weight, 4, H, I, false);
  auto d_x = at::empty({steps, S, B, I}, d_pre.options());
  const float* d_p = d_pre.data_ptr<float>();
  float* out = d_x.data_ptr<float>();
  const int64_t blocks = (B + kTileRows - 1) / kTileRows;
  at::parallel_for(0, steps * S * blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t t = unit / blocks / S, s = unit / blocks % S, q = unit % blocks;
      const int64_t b0 = q * B / blocks, b1 = (q + 1) * B / blocks;
      std::array<const float*, 4> z_k{};
      for (int64_t k = 0; k < 4; ++k) z_k[k] = z.row(t, s, k, b0);
      const Product product{w_panels.data_ptr<float>() + s * w_panels.stride(0), 4, H, I, d_p + ((t * S + s) * B + b0) * width, width, H,
                            out + ((t * S + s) * B + b0) * I, I, 0, true, z_k, I};
      kernel_product(product, b1 - b0);
    }
  });
  return models.out(d_x, 1);
}

// dW ([S,] 4H, I + H): gate k's rows sum d_pre_k^T [x * z_x^k | h_{t-1} * z_h^k] over steps and
// rows, h_{-1} = h0. d_pre (T, [S,] B, 4H), x (T, [S,] B, I), h0 ([S,] B, H), out (T, [S,] B, H).
// A thread takes one model's gate at a time: d_pre_k laid out in blocks of at most 12 of its
// columns, each block's values of a row side by side, so that the tile reads it front to back;
// then, for each panel of 32 input columns, those columns of every row masked into a buffer (T B x
// 32, in L2), which every row block of dW reads.
at::Tensor masked_weight_gradient(const at::Tensor& d_pre_in, const at::Tensor& x_in, const c10::optional<at::Tensor>& z_x_in,
                                  const at::Tensor& h0_in, const at::Tensor& out_in, const c10::optional<at::Tensor>& z_h_in) {
  const Models models{d_pre_in.dim() == 3, at::kFloat};
  const auto d_pre = models(d_pre_in, 1), x = models(x_in, 1), h0 = models(h0_in, 0), out = models(out_in, 1);
  const int64_t steps = d_pre.size(0), S = d_pre.size(1), B = d_pre.size(2), width = d_pre.size(3), H = width / 4, I = x.size(3);
  const MaskRows<float> z_x(models(z_x_in, 1), S, B), z_h(models(z_h_in, 1), S, B);
  auto d_weight = at::empty({S, width, I + H}, d_pre.options());
  const float* d_p = d_pre.data_ptr<float>();
  const float* x_p = x.data_ptr<float>();
  const float* h0_p = h0.data_ptr<float>();
  const float* out_p = out.data_ptr<float>();
  float* dw = d_weight.data_ptr<float>();
  const int64_t rows = steps * B, x_panels = (I + 31) / 32, column_panels = x_panels + (H + 31) / 32, blocks = (H + kTileRows - 1) / kTileRows;
  at::parallel_for(0, S * 4, 1, [&](int64_t first, int64_t last) {
    const std::unique_ptr<float[]> a(new float[rows * H]), y(new float[rows * 32]);  // filled before read
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t s = unit / 4, k = unit % 4;
      for (int64_t t = 0, n = 0; t < steps; ++t) {
        for (int64_t b = 0; b < B; ++b, ++n) {
          const float* from = d_p + ((t * S + s) * B + b) * width + k * H;
          for (int64_t q = 0; q < blocks; ++q) {  // block q: columns [j0, j1) of d_pre_k, at most 12
            const int64_t j0 = q * H / blocks, j1 = (q + 1) * H / blocks;
            const auto lanes = __mmask16((1u << (j1 - j0)) - 1);
            _mm512_mask_storeu_ps(a.get() + rows * j0 + n * (j1 - j0), lanes, _mm512_maskz_loadu_ps(lanes, from + j0));
          }
        }
      }
      for (int64_t panel = 0; panel < column_panels; ++panel) {
        const bool state = panel >= x_panels;  // columns of h_{t-1}, else of x
        const int64_t c0 = (state ? panel - x_panels : panel) * 32, columns = std::min<int64_t>(32, (state ? H : I) - c0);
        const __mmask16 lanes[2] = {__mmask16(columns >= 16 ? 0xFFFF : (1u << columns) - 1),
                                    __mmask16(columns >= 32 ? 0xFFFF : columns > 16 ? (1u << (columns - 16)) - 1 : 0)};
        for (int64_t t = 0; t < steps; ++t) {
          const float* from = state ? (t == 0 ? h0_p + s * B * H : out_p + ((t - 1) * S + s) * B * H) : x_p + (t * S + s) * B * I;
          const float* mask = (state ? z_h : z_x).row(t, s, k, 0);
          const int64_t C = state ? H : I;
          for (int64_t b = 0; b < B; ++b) {
            for (int v = 0; v < 2; ++v) {  // zero past the panel's columns
              __m512 value = _mm512_maskz_loadu_ps(lanes[v], from + b * C + c0 + 16 * v);
              if (mask) value = _mm512_mul_ps(value, _mm512_maskz_loadu_ps(lanes[v], mask + b * C + c0 + 16 * v));
              _mm512_storeu_ps(y.get() + (t * B + b) * 32 + 16 * v, value);
            }
          }
        }
        float* c = dw + (s * width + k * H) * (I + H) + (state ? I : 0) + c0;
        for (int64_t q = 0; q < blocks; ++q) {
          const int64_t j0 = q * H / blocks, j1 = (q + 1) * H / blocks;
          gradient_panel(j1 - j0, columns, a.get() + rows * j0, rows, y.get(), c + j0 * (I + H), I + H);
        }
      }
    }
  });
  return models.out(d_weight, 0);
}
#endif

bool kernel_runs() { return runs_kernel<float>(true); }

// "kernel", "blas" or "aten" (see Products); returns the former setting.
std::string products(const std::string& by) {
  static const std::array<std::string, 3> names{"kernel", "blas", "aten"};
  const auto found = std::find(names.begin(), names.end(), by);
  TORCH_CHECK(found != names.end(), "products: kernel, blas or aten, not ", by);
  const std::string before = names[static_cast<int>(products_by)];
  products_by = static_cast<Products>(found - names.begin());
  return before;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "masked LSTM, T steps forward");
  m.def("backward", &backward, "masked LSTM, T steps backward");
#if defined(__AVX512F__)
  m.def("masked_projection", &masked_projection, "masked input projection, in the kernel");
  m.def("masked_input_gradient", &masked_input_gradient, "the input's gradient, masks applied in the kernel's products");
  m.def("masked_weight_gradient", &masked_weight_gradient, "W_ih and W_hh's gradient, masked inputs formed in the kernel");
#endif
  m.def("kernel_runs", &kernel_runs, "whether float32 split-row products run in the AVX-512 kernel");
  m.def("masked_gate_sum", &masked_gate_sum, "masked input gradient: sum over gates of part * mask");
  m.def("products", &products, "what runs the products: kernel (default), blas or aten; returns the former setting");
}
