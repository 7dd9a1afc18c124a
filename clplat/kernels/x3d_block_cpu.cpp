// One streaming X3D block step for CPU inference, in one call (clplat/kernels/x3d_block_cpu.py).
//
// Why: at batch 1 a block's arithmetic is 0.1-0.3 ms, and the eager step spends about as much again
// on ~25 dispatched tensor ops (views, bias adds, activations, the SE gate) and on depthwise taps
// that run as ~10 strided multiply-adds over the whole map (4-8 GMAC/s). Here the GEMMs stay with
// MKL (through ATen), and everything between them is one pass per stage over data in cache:
//   conv_a GEMM -> bias + act | depthwise (kh, kw) taps for every temporal slot, added to the
//   partial sums, slot 0 finished (bias, act, SE channel sums) | SE fc1/fc2/sigmoid | scale +
//   SiLU | conv_c GEMM with the shortcut (or its 1x1 conv) as addend -> bias + ReLU.
// State layout is the Python path's exactly: the buffer (B, H'W', k, C) whose slots 1..k-1 are
// the next partial sums (returned as the permuted view (B, C, k-1, H'W')); slot 0 is this
// frame's conv_b output, which conv_c reads in place (row stride k*C).
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kIdentity = 0, kRelu = 1, kSilu = 2;

// Cephes' expf core: e^r for x = n ln 2 + r (n the nearest integer to x / ln 2), a degree-5
// polynomial; T is float or a vector of floats (the scalar and vector exp below share it).
template <class T> inline T exp_core(T x, T n) {
  T r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// exp(x) as Cephes' expf (range reduction by ln 2, degree-5 polynomial, ~1 ulp): branch-free,
// so loops calling it vectorise (libm's expf does not without -ffast-math).
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float p = exp_core(x, n);
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, e);
}

inline float sigmoid(float v) { return 1.0f / (1.0f + exp_poly(-v)); }

inline float activate(float v, int64_t act) {
  if (act == kRelu) return v > 0.0f ? v : 0.0f;
  if (act == kSilu) return v * sigmoid(v);
  return v;
}

// Vector types (GCC/Clang extensions): explicit registers for the tap accumulators, which plain
// float arrays did not get (a store-to-load chain per multiply-add: ~9 GMAC/s instead of ~40),
// and a vector exp (GCC does not vectorise the scalar one above: its bit cast goes through memory).
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi8 __attribute__((vector_size(32), aligned(4)));
template <int N> struct IntVec;  // the int32 vector type of N lanes
template <> struct IntVec<16> { typedef vi16 type; };
template <> struct IntVec<8> { typedef vi8 type; };
template <class T> inline T vload(const float* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
template <class T> inline void vstore(float* p, const T& v) { std::memcpy(p, &v, sizeof(T)); }
template <class T> inline T vzero() { T v; std::memset(&v, 0, sizeof(T)); return v; }
template <class T> inline T splat(float f) { return vzero<T>() + f; }

// exp_poly on vectors; the nearest integer n by the 1.5 * 2^23 trick (its low bits are n).
template <class T> inline T vexp(T x) {
  using I = typename IntVec<sizeof(T) / sizeof(float)>::type;
  const T lo = splat<T>(-87.0f), hi = splat<T>(88.0f), magic = splat<T>(12582912.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const T t = x * 1.44269504088896341f + magic;
  const T n = t - magic;
  const T p = exp_core(x, n);
  const I e = (((I)t - (I)magic) + 127) << 23;
  return p * (T)e;
}
inline float vexp(float x) { return exp_poly(x); }

template <int64_t ACT, class T> inline T vact(T v) {
  if constexpr (ACT == kRelu) {
    if constexpr (std::is_same_v<T, float>) {
      return v > 0.0f ? v : 0.0f;
    } else {
      const T z = vzero<T>();
      return v > z ? v : z;
    }
  } else if constexpr (ACT == kSilu) {
    return v / (1.0f + vexp(-v));
  } else {
    return v;
  }
}

// rows (n, c) += bias, then act; in place. The branch on act is outside the vector loop.
void bias_act_rows(float* y, const float* bias, int64_t n, int64_t c, int64_t act) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = y + r * c;
    if (bias != nullptr) {
      for (int64_t j = 0; j < c; ++j) row[j] += bias[j];
    }
    if (act == kRelu) {
      for (int64_t j = 0; j < c; ++j) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
    } else if (act == kSilu) {
      for (int64_t j = 0; j < c; ++j) row[j] = row[j] * sigmoid(row[j]);
    }
  }
}

struct Taps {
  const float* x;     // (H, W, C) of one batch element
  const float* w;     // (kh*kw, K, C), slot m = temporal tap K-1-m
  const float* bias;  // (C) or null
  const float* acc;   // partial sums of one batch element, strides below; null = zeros
  int64_t acc_sp, acc_sm;
  float* buf;         // (H'W', K, C) of one batch element
  float* sums;        // (C): SE squeeze sums of slot 0 (after bias and act)
  int64_t h, w_, c, ho, wo, kh, kw, sh, sw, ph, pw;
  int64_t act;
  float* y0 = nullptr;  // (H'W', C) of one batch element: slot 0 goes here instead (null: into buf)
};


// Channels [c0, c0+V) of every output position (T: a V-float vector, or float for V = 1): the
// accumulators of all K slots stay in registers across the kh*kw offsets; the block's weights
// (kh*kw*K*V floats) stay in L1 across positions. Blocks may overlap (the last one is shifted
// left): overlapping lanes compute the same values and are stored twice, so no masked tail.
template <int K, int V, class T, int64_t ACT>
void taps_block(const Taps& t, int64_t c0) {
  const int64_t C = t.c;
  T sum = vzero<T>();
  float bias[V];
  for (int j = 0; j < V; ++j) bias[j] = t.bias != nullptr ? t.bias[c0 + j] : 0.0f;
  const T vbias = vload<T>(bias);
  for (int64_t oy = 0; oy < t.ho; ++oy) {
    const int64_t iy0 = oy * t.sh - t.ph;
    const int64_t dy0 = std::max<int64_t>(0, -iy0), dy1 = std::min<int64_t>(t.kh, t.h - iy0);
    for (int64_t ox = 0; ox < t.wo; ++ox) {
      const int64_t ix0 = ox * t.sw - t.pw;
      const int64_t dx0 = std::max<int64_t>(0, -ix0), dx1 = std::min<int64_t>(t.kw, t.w_ - ix0);
      const int64_t p = oy * t.wo + ox;
      T a[K];
#pragma GCC unroll 8
      for (int m = 0; m < K - 1; ++m)
        a[m] = t.acc != nullptr ? vload<T>(t.acc + p * t.acc_sp + m * t.acc_sm + c0) : vzero<T>();
      a[K - 1] = vzero<T>();
      for (int64_t dy = dy0; dy < dy1; ++dy) {
        const float* xrow = t.x + ((iy0 + dy) * t.w_ + ix0) * C + c0;
        const float* wrow = t.w + (dy * t.kw * K) * C + c0;
        for (int64_t dx = dx0; dx < dx1; ++dx) {
          const T xv = vload<T>(xrow + dx * C);
          const float* wp = wrow + dx * K * C;
#pragma GCC unroll 8
          for (int m = 0; m < K; ++m) a[m] += xv * vload<T>(wp + m * C);
        }
      }
      float* out = t.buf + p * K * C + c0;
      const T yv = vact<ACT>(a[0] + vbias);
      vstore(t.y0 != nullptr ? t.y0 + p * C + c0 : out, yv);
      sum += yv;
#pragma GCC unroll 8
      for (int m = 1; m < K; ++m) vstore(out + m * C, a[m]);
    }
  }
  vstore(t.sums + c0, sum);
}

template <int K, int64_t ACT>
void taps_all(const Taps& t) {
  const int64_t C = t.c;
  if (C < 8) {
    for (int64_t c0 = 0; c0 < C; ++c0) taps_block<K, 1, float, ACT>(t, c0);
    return;
  }
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) taps_block<K, 16, v16, ACT>(t, c0);
  if (c0 == C) return;
  if (C - c0 > 8 && C >= 16) {
    taps_block<K, 16, v16, ACT>(t, C - 16);
  } else {
    for (; c0 + 8 <= C; c0 += 8) taps_block<K, 8, v8, ACT>(t, c0);
    if (c0 < C) taps_block<K, 8, v8, ACT>(t, C - 8);
  }
}

template <int K>
void taps_act(const Taps& t) {
  if (t.act == kRelu) return taps_all<K, kRelu>(t);
  if (t.act == kSilu) return taps_all<K, kSilu>(t);
  return taps_all<K, kIdentity>(t);
}

void run_taps(const Taps& t, int64_t k) {
  switch (k) {
    case 2: return taps_act<2>(t);
    case 3: return taps_act<3>(t);
    case 4: return taps_act<4>(t);
    case 5: return taps_act<5>(t);
    default: TORCH_CHECK(false, "x3d_block_step: temporal kernel ", k, " not compiled (2..5)");
  }
}

// out[o] = act(b[o] + sum_i in[i] * w[i, o]) for a (cin, cout) row-major weight.
void dense(const float* in, const float* w, const float* b, float* out, int64_t cin, int64_t cout, int64_t act) {
  for (int64_t o = 0; o < cout; ++o) out[o] = b != nullptr ? b[o] : 0.0f;
  for (int64_t i = 0; i < cin; ++i) {
    const float v = in[i];
    const float* wr = w + i * cout;
    for (int64_t o = 0; o < cout; ++o) out[o] += v * wr[o];
  }
  for (int64_t o = 0; o < cout; ++o) out[o] = activate(out[o], act);
}

// row[c] = silu(row[c] * g[c]) in place. C >= 16: vectors, the tail as one vector shifted left
// whose result is computed before the main loop changes the lanes it shares with it.
void scale_silu(float* row, const float* g, int64_t C) {
  if (C < 16) {
    for (int64_t c = 0; c < C; ++c) row[c] = vact<kSilu>(row[c] * g[c]);
    return;
  }
  const int64_t tail = C - 16;
  const v16 last = vact<kSilu>(vload<v16>(row + tail) * vload<v16>(g + tail));
  for (int64_t c = 0; c + 16 <= C; c += 16) vstore(row + c, vact<kSilu>(vload<v16>(row + c) * vload<v16>(g + c)));
  vstore(row + tail, last);
}

const float* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

void check_weight(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              "x3d_block_step: ", name, " must be a contiguous float32 CPU tensor");
}

}  // namespace

// frame (B, Cin, H, W) any layout; acc (B, C, k-1, H'W') logical; returns (out (B, Cout, H', W')
// as a channels-last view, or an empty tensor when not emitting; next partial sums).
std::tuple<at::Tensor, at::Tensor> x3d_block_step(
    const at::Tensor& frame, const at::Tensor& acc, const at::Tensor& skip,
    const at::Tensor& wa, const c10::optional<at::Tensor>& ba, int64_t act_a,
    const at::Tensor& wb, const c10::optional<at::Tensor>& bb, int64_t act_b,
    at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
    const c10::optional<at::Tensor>& w1, const c10::optional<at::Tensor>& b1, int64_t act_1,
    const c10::optional<at::Tensor>& w2, const c10::optional<at::Tensor>& b2, int64_t act_2,
    const at::Tensor& wc, const c10::optional<at::Tensor>& bc,
    const c10::optional<at::Tensor>& ws, const c10::optional<at::Tensor>& bs, at::IntArrayRef skip_stride,
    bool emit) {
  TORCH_CHECK(frame.dim() == 4 && frame.scalar_type() == at::kFloat && frame.device().is_cpu(),
              "x3d_block_step: frame must be a (B, C, H, W) float32 CPU tensor");
  for (const auto* w : {&wa, &wb, &wc}) check_weight(*w, "a weight");
  for (const auto* w : {&ba, &bb, &w1, &b1, &w2, &b2, &bc, &ws, &bs})
    if (w->has_value() && (*w)->defined()) check_weight(**w, "an optional weight");
  const int64_t B = frame.size(0), H = frame.size(2), W = frame.size(3);
  const int64_t C = wa.size(1), cout = wc.size(1);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1];
  const int64_t K = wb.size(1);
  const int64_t Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1, P = Ho * Wo;
  TORCH_CHECK(wa.size(0) == frame.size(1) && wb.size(0) == kh * kw && wb.size(2) == C && wc.size(0) == C,
              "x3d_block_step: weight shapes do not match the frame");
  TORCH_CHECK(acc.dim() == 4 && acc.size(0) == B && acc.size(1) == C && acc.size(2) == K - 1 && acc.size(3) == P,
              "x3d_block_step: partial sums must be (B, C, k-1, H'W')");

  // conv_a: one GEMM on channels-last rows, then bias + act in one pass
  const at::Tensor x = frame.permute({0, 2, 3, 1}).contiguous();
  at::Tensor ya = at::mm(x.view({B * H * W, frame.size(1)}), wa);
  bias_act_rows(ya.data_ptr<float>(), ptr_or_null(ba), B * H * W, C, act_a);

  // conv_b: taps onto the partial sums (read in their own strides), slot 0 finished
  at::Tensor accl = acc.permute({0, 3, 2, 1});  // (B, H'W', k-1, C)
  if (K > 1 && accl.stride(3) != 1) accl = accl.contiguous();
  at::Tensor buf = at::empty({B, P, K, C}, frame.options());
  at::Tensor sums = at::empty({B, C}, frame.options());
  const float* wbp = wb.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    Taps t{ya.data_ptr<float>() + b * H * W * C, wbp, ptr_or_null(bb),
           K > 1 ? accl.data_ptr<float>() + b * accl.stride(0) : nullptr,
           K > 1 ? accl.stride(1) : 0, K > 1 ? accl.stride(2) : 0,
           buf.data_ptr<float>() + b * P * K * C, sums.data_ptr<float>() + b * C,
           H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, act_b};
    run_taps(t, K);
  }
  at::Tensor next = buf.narrow(2, 1, K - 1).permute({0, 3, 2, 1});
  if (!emit) return {at::empty({0}, frame.options()), next};

  float* y = buf.data_ptr<float>();  // slot 0 of position p: y + p*K*C
  if (w1.has_value() && w1->defined()) {  // squeeze-excite (per-frame squeeze), then SiLU
    const int64_t hid = (*w1).size(1);
    TORCH_CHECK((*w1).size(0) == C && w2.has_value() && (*w2).size(0) == hid && (*w2).size(1) == C,
                "x3d_block_step: SE weight shapes");
    std::vector<float> mean(C), hidden(hid), gate(C);
    for (int64_t b = 0; b < B; ++b) {
      const float* s = sums.data_ptr<float>() + b * C;
      for (int64_t c = 0; c < C; ++c) mean[c] = s[c] / static_cast<float>(P);
      dense(mean.data(), (*w1).data_ptr<float>(), ptr_or_null(b1), hidden.data(), C, hid, act_1);
      dense(hidden.data(), (*w2).data_ptr<float>(), ptr_or_null(b2), gate.data(), hid, C, act_2);
      for (int64_t c = 0; c < C; ++c) gate[c] = sigmoid(gate[c]);
      for (int64_t p = 0; p < P; ++p) scale_silu(y + (b * P + p) * K * C, gate.data(), C);
    }
  }

  // conv_c with the shortcut as addend, then bias + ReLU
  const at::Tensor y2 = buf.select(2, 0).reshape({B * P, C});  // a view: row stride K*C
  at::Tensor out;
  if (ws.has_value() && ws->defined()) {
    at::Tensor xs = skip.permute({0, 2, 3, 1});
    const int64_t ss_h = skip_stride[0], ss_w = skip_stride[1];
    TORCH_CHECK((skip.size(2) - 1) / ss_h + 1 == Ho && (skip.size(3) - 1) / ss_w + 1 == Wo,
                "x3d_block_step: shortcut output size differs from the main path's");
    if (ss_h != 1 || ss_w != 1) xs = xs.slice(1, 0, c10::nullopt, ss_h).slice(2, 0, c10::nullopt, ss_w);
    xs = xs.contiguous().view({B * P, skip.size(1)});
    out = bs.has_value() && bs->defined() ? at::addmm(*bs, xs, *ws) : at::mm(xs, *ws);
    out.addmm_(y2, wc);
  } else {
    TORCH_CHECK(skip.size(1) == cout && skip.size(2) == Ho && skip.size(3) == Wo, "x3d_block_step: skip shape");
    out = at::addmm(skip.permute({0, 2, 3, 1}).reshape({B * P, cout}), y2, wc);
  }
  bias_act_rows(out.data_ptr<float>(), ptr_or_null(bc), B * P, cout, kRelu);
  return {out.view({B, Ho, Wo, cout}).permute({0, 3, 1, 2}), next};
}

// One depthwise partial-sum conv step alone (the X3D stem's (k,1,1) temporal conv): frame
// (B, C, H, W) any layout, acc (B, C, k-1, H'W') logical; returns (this frame's output
// (B, C, H', W') over channels-last memory (bias and act applied), or an empty tensor when not
// emitting; the next partial sums, the view of slots 1..k-1). Same state as the Python step.
std::tuple<at::Tensor, at::Tensor> x3d_taps_step(
    const at::Tensor& frame, const at::Tensor& acc, const at::Tensor& wb, const c10::optional<at::Tensor>& bb,
    int64_t act_b, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding, bool emit) {
  TORCH_CHECK(frame.dim() == 4 && frame.scalar_type() == at::kFloat && frame.device().is_cpu(),
              "x3d_taps_step: frame must be a (B, C, H, W) float32 CPU tensor");
  check_weight(wb, "the depthwise weight");
  if (bb.has_value() && bb->defined()) check_weight(*bb, "the bias");
  const int64_t B = frame.size(0), C = frame.size(1), H = frame.size(2), W = frame.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t K = wb.size(1);
  const int64_t Ho = (H + 2 * ph - kh) / sh + 1, Wo = (W + 2 * pw - kw) / sw + 1, P = Ho * Wo;
  TORCH_CHECK(wb.size(0) == kh * kw && wb.size(2) == C, "x3d_taps_step: weight shape does not match the frame");
  TORCH_CHECK(acc.dim() == 4 && acc.size(0) == B && acc.size(1) == C && acc.size(2) == K - 1 && acc.size(3) == P,
              "x3d_taps_step: partial sums must be (B, C, k-1, H'W')");
  const at::Tensor x = frame.permute({0, 2, 3, 1}).contiguous();
  at::Tensor accl = acc.permute({0, 3, 2, 1});  // (B, H'W', k-1, C)
  if (accl.stride(3) != 1) accl = accl.contiguous();
  at::Tensor buf = at::empty({B, P, K, C}, frame.options());
  // the output in its own tensor (an op's outputs must not alias each other); slot 0 of buf unused
  at::Tensor out = emit ? at::empty({B, Ho, Wo, C}, frame.options()) : at::empty({0}, frame.options());
  std::vector<float> sums(C);
  for (int64_t b = 0; b < B; ++b) {
    Taps t{x.data_ptr<float>() + b * H * W * C, wb.data_ptr<float>(), ptr_or_null(bb),
           accl.data_ptr<float>() + b * accl.stride(0), accl.stride(1), accl.stride(2),
           buf.data_ptr<float>() + b * P * K * C, sums.data(), H, W, C, Ho, Wo, kh, kw, sh, sw, ph, pw, act_b,
           emit ? out.data_ptr<float>() + b * P * C : nullptr};
    run_taps(t, K);
  }
  at::Tensor next = buf.narrow(2, 1, K - 1).permute({0, 3, 2, 1});
  return {emit ? out.permute({0, 3, 1, 2}) : out, next};
}

// A dense conv with few input channels (the X3D stem's 3-channel 3x3, stride 2), direct: oneDNN
// runs it at a fraction of its peak (tiny reduction, 27 per output), and im2col + one GEMM is
// slower still. The input is copied once, zero-padded, channels-last (any input strides); each
// output position's NV*8 channels stay in registers over the kh*kw*Cin products, two positions
// at a time (independent FMA chains); the weight (kh*kw*Cin, NV*8) stays in L1.
template <int NV, int NP>
inline void conv_positions(const float* xp, int64_t rowstride, int64_t cin, int64_t kh, int64_t kw, int64_t sw,
                           const float* w, const v8* bias, float* out, int64_t cout, int64_t act) {
  v8 a[NP][NV];
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < NV; ++v) a[p][v] = bias[v];
  for (int64_t dy = 0; dy < kh; ++dy) {
    for (int64_t dx = 0; dx < kw; ++dx) {
      const float* xs = xp + dy * rowstride + dx * cin;
      const float* ws = w + (dy * kw + dx) * cin * NV * 8;
      for (int64_t ci = 0; ci < cin; ++ci) {
        v8 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = vload<v8>(ws + (ci * NV + v) * 8);
        for (int p = 0; p < NP; ++p) {
          const float xv = xs[p * sw * cin + ci];
          for (int v = 0; v < NV; ++v) a[p][v] += xv * wv[v];
        }
      }
    }
  }
  for (int p = 0; p < NP; ++p) {
    float* o = out + p * cout;
    for (int v = 0; v < NV; ++v) {
      v8 y = act == kRelu ? vact<kRelu>(a[p][v]) : (act == kSilu ? vact<kSilu>(a[p][v]) : a[p][v]);
      const int64_t lanes = std::min<int64_t>(8, cout - v * 8);
      if (lanes == 8) vstore(o + v * 8, y); else std::memcpy(o + v * 8, &y, lanes * sizeof(float));
    }
  }
}

template <int NV>
void conv_small_frame(const float* xp, int64_t hp, int64_t wp, int64_t cin, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t ho, int64_t wo, const float* w, const v8* bias, float* out, int64_t cout,
                      int64_t act) {
  (void)hp;
  const int64_t rowstride = wp * cin;
  for (int64_t oy = 0; oy < ho; ++oy) {
    const float* row = xp + oy * sh * rowstride;
    float* orow = out + oy * wo * cout;
    int64_t ox = 0;
    for (; ox + 2 <= wo; ox += 2)
      conv_positions<NV, 2>(row + ox * sw * cin, rowstride, cin, kh, kw, sw, w, bias, orow + ox * cout, cout, act);
    if (ox < wo)
      conv_positions<NV, 1>(row + ox * sw * cin, rowstride, cin, kh, kw, sw, w, bias, orow + ox * cout, cout, act);
  }
}

// frame (B, Cin, H, W) any strides; weight (kh*kw*Cin, Cout) rows (dy, dx, ci); returns
// act(conv + bias) as (B, Cout, H', W') over channels-last memory.
at::Tensor x3d_conv_small(const at::Tensor& frame, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          int64_t act, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(frame.dim() == 4 && frame.scalar_type() == at::kFloat && frame.device().is_cpu(),
              "x3d_conv_small: frame must be a (B, C, H, W) float32 CPU tensor");
  check_weight(weight, "the weight");
  if (bias.has_value() && bias->defined()) check_weight(*bias, "the bias");
  const int64_t B = frame.size(0), cin = frame.size(1), H = frame.size(2), W = frame.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
  const int64_t cout = weight.size(1), NV = (cout + 7) / 8;
  TORCH_CHECK(weight.size(0) == kh * kw * cin && NV <= 4, "x3d_conv_small: weight must be (kh*kw*Cin, Cout <= 32)");
  const int64_t ho = (H + 2 * ph - kh) / sh + 1, wo = (W + 2 * pw - kw) / sw + 1;
  const int64_t hp = H + 2 * ph, wp = W + 2 * pw;
  // weights padded to NV*8 columns, bias as vectors
  std::vector<float> wpad(kh * kw * cin * NV * 8, 0.0f), bpad(NV * 8, 0.0f);
  const float* wsrc = weight.data_ptr<float>();
  for (int64_t r = 0; r < kh * kw * cin; ++r) std::memcpy(&wpad[r * NV * 8], wsrc + r * cout, cout * sizeof(float));
  if (const float* bp = ptr_or_null(bias)) std::memcpy(bpad.data(), bp, cout * sizeof(float));
  v8 bvec[4];
  for (int64_t v = 0; v < NV; ++v) bvec[v] = vload<v8>(&bpad[v * 8]);
  std::vector<float> xp(hp * wp * cin);
  at::Tensor out = at::empty({B, ho, wo, cout}, frame.options());
  const float* src = frame.data_ptr<float>();
  const int64_t sb = frame.stride(0), sc = frame.stride(1), sy = frame.stride(2), sx = frame.stride(3);
  for (int64_t b = 0; b < B; ++b) {
    std::fill(xp.begin(), xp.end(), 0.0f);
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t y = 0; y < H; ++y) {
        const float* s = src + b * sb + c * sc + y * sy;
        float* d = xp.data() + ((y + ph) * wp + pw) * cin + c;
        for (int64_t x = 0; x < W; ++x) d[x * cin] = s[x * sx];
      }
    float* o = out.data_ptr<float>() + b * ho * wo * cout;
    switch (NV) {
      case 1: conv_small_frame<1>(xp.data(), hp, wp, cin, kh, kw, sh, sw, ho, wo, wpad.data(), bvec, o, cout, act); break;
      case 2: conv_small_frame<2>(xp.data(), hp, wp, cin, kh, kw, sh, sw, ho, wo, wpad.data(), bvec, o, cout, act); break;
      case 3: conv_small_frame<3>(xp.data(), hp, wp, cin, kh, kw, sh, sw, ho, wo, wpad.data(), bvec, o, cout, act); break;
      default: conv_small_frame<4>(xp.data(), hp, wp, cin, kh, kw, sh, sw, ho, wo, wpad.data(), bvec, o, cout, act);
    }
  }
  return out.permute({0, 3, 1, 2});
}

TORCH_LIBRARY(clplat_x3d, m) {
  m.def(
      "block_step(Tensor frame, Tensor acc, Tensor skip, Tensor wa, Tensor? ba, int act_a, Tensor wb, "
      "Tensor? bb, int act_b, int[] kernel, int[] stride, int[] padding, Tensor? w1, Tensor? b1, int act_1, "
      "Tensor? w2, Tensor? b2, int act_2, Tensor wc, Tensor? bc, Tensor? ws, Tensor? bs, int[] skip_stride, bool emit) "
      "-> (Tensor, Tensor)");
  m.def(
      "taps_step(Tensor frame, Tensor acc, Tensor wb, Tensor? bb, int act_b, int[] kernel, int[] stride, "
      "int[] padding, bool emit) -> (Tensor, Tensor)");
  m.def("conv_small(Tensor frame, Tensor weight, Tensor? bias, int act, int[] kernel, int[] stride, int[] padding) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(clplat_x3d, CPU, m) {
  m.impl("block_step", &x3d_block_step);
  m.impl("taps_step", &x3d_taps_step);
  m.impl("conv_small", &x3d_conv_small);
}

// The same functions as a Python module: eager calls skip the dispatcher's boxing of ~24
// arguments (~3.5 µs a call against ~1 µs); traced steps use the torch ops above.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("block_step", &x3d_block_step);
  m.def("taps_step", &x3d_taps_step);
  m.def("conv_small", &x3d_conv_small);
}
