// The SMMF step for CPU tensors in one pass over each tensor, compiled at first use by smmf.cpp_backend.
//
// Each thread first checks its rows of a tensor's gradient (the tensor steps only if the sum of squares is
// finite, smmf.kernels.step_allowed's rule; else it keeps its parameter and state), then steps those rows
// while they may still be in its cache. A row of a factorized (n, m) tensor is stepped in one pass: the
// old moments are rebuilt from the factors and signs, the parameter and the new signs are written, and
// the row's V and |M| go into a row buffer that then adds to the row sums and this thread's column
// partial sums, so nothing of the tensor's size is ever materialized. Column factors are replaced only
// after every row has read the old ones; partial sums are combined in thread order, so equal inputs and
// thread counts give bitwise equal results. The arithmetic is written in the same order as smmf.kernels
// (the reference formulas); sums accumulate in double. Stochastic rounding draws the same bits as
// smmf.rounding. The step's schedules come from each tensor's step counter, which the kernel then advances
// (or its skipped-step counter), so that a step costs one call from Python and no small torch operations.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

namespace {

// One tensor, as smmf.cpp_backend fills it (a ctypes Structure of the same layout).
struct Desc {
    void* p;
    const void* g;
    uint8_t* sign;  // packed bits (ceil(m/8) bytes per row), one 0/1 byte per sign, or null (beta None)
    void* row_m;
    void* col_m;
    void* row_v;
    void* col_v;
    float* step;  // the state's step counter (a float32 scalar): steps taken
    float* skipped;  // and steps skipped for a non-finite gradient
    int64_t rows;
    int64_t cols;
    int64_t seed;  // stochastic rounding's per-parameter seed, or -1
};

enum SignMode { kNoMomentum = 0, kPacked = 1, kBytes = 8 };

constexpr int64_t kMask31 = 0x7FFFFFFF;
constexpr int64_t kMix = 0x45D9F3B;
constexpr int64_t kParallelNumel = 1 << 15;  // smaller tensors run on one thread, many at a time
// A run's elements up to a multiple of this go through the compiler's own vectors (32 lanes from GCC 12 on
// AVX-512), the rest through vectors of 16: a run of 24 elements (a packed plane of a 192-column tensor)
// went element by element, 4x slower a step.
constexpr int64_t kWideLanes = 32;

inline int64_t mix(int64_t x) {
    x &= kMask31;
    x = ((x ^ (x >> 16)) * kMix) & kMask31;
    x = ((x ^ (x >> 16)) * kMix) & kMask31;
    return x ^ (x >> 16);
}

// mix() of x's low 31 bits in 32-bit arithmetic, for the element loop (it vectorizes): the low 31 bits
// of a product depend only on the low 31 bits of its factors, so the result is the same.
inline uint32_t mix32(uint32_t x) {
    constexpr uint32_t mask = static_cast<uint32_t>(kMask31), factor = static_cast<uint32_t>(kMix);
    x &= mask;
    x = ((x ^ (x >> 16)) * factor) & mask;
    x = ((x ^ (x >> 16)) * factor) & mask;
    return x ^ (x >> 16);
}

inline float load(float x) { return x; }
inline double load(double x) { return x; }
inline float load(uint16_t x) {  // bfloat16 bits
    uint32_t bits = static_cast<uint32_t>(x) << 16;
    float out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
}

inline uint32_t float_bits(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    return bits;
}

// Round to nearest even (torch's float -> bfloat16), or stochastically with 16 random bits; NaN becomes
// torch's 0x7FC0. Written without branches so that the element loop vectorizes.
template <bool stochastic>
inline uint16_t to_bf16(float x, uint32_t random) {
    const uint32_t bits = float_bits(x);
    const uint32_t add = stochastic ? (random & 0xFFFFu) : 0x7FFFu + ((bits >> 16) & 1u);
    const uint16_t rounded = static_cast<uint16_t>((bits + add) >> 16);
    return x != x ? static_cast<uint16_t>(0x7FC0) : rounded;
}

template <bool stochastic>
inline void store(float* out, float x, uint32_t) { *out = x; }
template <bool stochastic>
inline void store(double* out, double x, uint32_t) { *out = x; }
template <bool stochastic>
inline void store(uint16_t* out, float x, uint32_t random) { *out = to_bf16<stochastic>(x, random); }

template <typename T>
struct Scalars {
    T lr, eps, wd_coupled, decay, direction, beta1, beta2, one_minus_beta1, one_minus_beta2;
    uint32_t step_seed;  // mix(seed ^ mix(step)), for the random bits
};

// Sums a row contributes: to its own factors and to its thread's column partials.
struct RowSums {
    double v, m;
};

// A thread's buffers for one row: its new sign bits, and each element's V and |M| until the row is summed.
template <typename T>
struct RowBuffers {
    std::vector<uint8_t> new_bits;
    std::vector<T> v, magnitude;
    RowBuffers(int64_t m, int64_t width, bool momentum)
        : new_bits(momentum ? width : 0), v(momentum ? m : 0), magnitude(momentum ? m : 0) {}
};

// A row's V and |M|, added into its sums (returned) and into the thread's column partials.
template <typename T>
RowSums add_row(const T* v, const T* magnitude, int64_t m, double* acc_v, double* acc_m) {
    double sum_v = 0.0, sum_m = 0.0;
#pragma omp simd reduction(+ : sum_v, sum_m)
    for (int64_t c = 0; c < m; ++c) {
        sum_v += v[c];
        acc_v[c] += v[c];
        sum_m += magnitude[c];
        acc_m[c] += magnitude[c];
    }
    return {sum_v, sum_m};
}

// One row. P: the parameter and gradient storage type; T: the arithmetic type; mode: a SignMode;
// stochastic: round to bf16 stochastically (template arguments, so that each loop is compiled and
// vectorized without the branches of the others).
template <typename P, typename T, int mode, bool stochastic>
RowSums step_row(const Desc& d, const Scalars<T>& s, int64_t r, double* acc_v, double* acc_m, RowBuffers<T>& buf) {
    const int64_t m = d.cols;
    P* p = static_cast<P*>(d.p) + r * m;
    const P* g = static_cast<const P*>(d.g) + r * m;
    const T rv = static_cast<T*>(d.row_v)[r];
    const T* cv = static_cast<const T*>(d.col_v);
    const T rm = mode == kNoMomentum ? T(0) : static_cast<T*>(d.row_m)[r];
    const T* cm = static_cast<const T*>(d.col_m);
    const int64_t width = (m + 7) / 8;
    const uint32_t row_index = static_cast<uint32_t>(r * m);  // element r*m + c, modulo 2^32 (mix32 keeps 31 bits)
    const uint8_t* old_bits = mode == kPacked ? d.sign + r * width : (mode == kBytes ? d.sign + r * m : nullptr);
    uint8_t* new_bits = buf.new_bits.data();
    T* row_v = buf.v.data();
    T* row_magnitude = buf.magnitude.data();
    if (mode == kPacked) std::memset(new_bits, 0, width);
    // Packed signs: bit k of byte j is column k * width + j, so each plane k is a contiguous run. With a
    // first moment the sums wait for the row's end (row_v, row_magnitude): a reduction in the element
    // loop is finished at each run's end, which cost more than stepping a short run (a plane of m / 8).
    const int planes = mode == kPacked ? 8 : 1;
    const int64_t run = mode == kPacked ? width : m;
    for (int k = 0; k < planes; ++k) {
        const int64_t c0 = k * run;
        const int64_t len = c0 >= m ? 0 : (m - c0 < run ? m - c0 : run);
        const auto element = [&](int64_t j) __attribute__((always_inline)) -> T {  // returns V
            const int64_t c = c0 + j;
            T grad = static_cast<T>(load(g[c])) * s.direction;
            T param = static_cast<T>(load(p[c]));
            grad = grad + s.wd_coupled * param;
            param = param * s.decay;
            const T v = s.beta2 * (rv * cv[c]) + s.one_minus_beta2 * (grad * grad);
            const T denom = std::sqrt(v) + s.eps;
            T numerator = grad;
            if (mode != kNoMomentum) {
                const int bit = mode == kPacked ? (old_bits[j] >> k) & 1 : old_bits[c];
                const T sign = static_cast<T>(bit) * T(2) - T(1);
                const T moment = s.beta1 * (sign * (rm * cm[c])) + s.one_minus_beta1 * grad;
                numerator = moment;
                row_magnitude[c] = std::fabs(moment);
                const uint8_t positive = moment > T(0) ? 1 : 0;
                if (mode == kPacked) {
                    new_bits[j] |= static_cast<uint8_t>(positive << k);
                } else {
                    new_bits[c] = positive;
                }
            }
            const T update = denom > T(0) ? numerator / denom : T(0);
            const T result = param - s.lr * update;
            const uint32_t random = stochastic ? mix32((row_index + static_cast<uint32_t>(c)) ^ s.step_seed) : 0u;
            store<stochastic>(&p[c], result, random);
            return v;
        };
        if constexpr (mode == kNoMomentum) {  // one run of the whole row, no sign bytes: sum on the way
            double sum_v = 0.0;
#pragma omp simd reduction(+ : sum_v)
            for (int64_t j = 0; j < len; ++j) {
                const T v = element(j);
                sum_v += v;
                acc_v[j] += v;
            }
            return {sum_v, 0.0};
        }
        const int64_t wide_end = len - len % kWideLanes;
#pragma omp simd
        for (int64_t j = 0; j < wide_end; ++j) row_v[c0 + j] = element(j);
#pragma omp simd simdlen(16)
        for (int64_t j = wide_end; j < len; ++j) row_v[c0 + j] = element(j);
    }
    return add_row(row_v, row_magnitude, m, acc_v, acc_m);
}

// col <- col_sum / sum(col_sum) in T (left as the sums where the total is 0), as
// smmf.kernels.normalize_columns.
template <typename T>
void normalize_columns(T* col, const std::vector<double>& sums, int64_t m) {
    std::vector<T> rounded(m);
    T total = 0;
    for (int64_t c = 0; c < m; ++c) {
        rounded[c] = static_cast<T>(sums[c]);
        total += rounded[c];
    }
    const T divisor = total == T(0) ? T(1) : total;
    for (int64_t c = 0; c < m; ++c) col[c] = rounded[c] / divisor;
}

// The sum of squares of elements [begin, end) of a gradient, in T: it overflows to inf where the
// gradient holds a NaN or inf, or an element whose square (or the sum) is too large for T.
template <typename P, typename T>
T sum_of_squares(const P* g, int64_t begin, int64_t end) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; ++i) {
        const T x = static_cast<T>(load(g[i]));
        sum += x * x;
    }
    return sum;
}

// Returns whether the tensor stepped: not where its gradient's sum of squares is not finite (each
// thread sums its own rows, which it then steps while they may still be in its cache).
template <typename P, typename T, int mode, bool stochastic>
bool step_tensor(const Desc& d, const Scalars<T>& s, int threads) {
    const int64_t n = d.rows, m = d.cols;
    const int64_t width = mode == kPacked ? (m + 7) / 8 : m;
    std::vector<double> acc(static_cast<size_t>(threads) * 2 * m, 0.0);
    std::vector<T> row_sum_v(n), row_sum_m(n);
    std::vector<T> squares(threads, T(0));
    bool finite = true;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = omp_get_thread_num();
        const int count = omp_get_num_threads();
        const int64_t begin = n * tid / count, end = n * (tid + 1) / count;
        squares[tid] = sum_of_squares<P, T>(static_cast<const P*>(d.g), begin * m, end * m);
#pragma omp barrier
#pragma omp single
        {
            T total = 0;
            for (int t = 0; t < count; ++t) total += squares[t];
            finite = std::isfinite(total);
        }  // the implied barrier: every thread reads the same answer
        double* acc_v = acc.data() + static_cast<size_t>(tid) * 2 * m;
        double* acc_m = acc_v + m;
        RowBuffers<T> buf(m, width, mode != kNoMomentum);
        for (int64_t r = finite ? begin : end; r < end; ++r) {
            const RowSums sums = step_row<P, T, mode, stochastic>(d, s, r, acc_v, acc_m, buf);
            row_sum_v[r] = static_cast<T>(sums.v);
            row_sum_m[r] = static_cast<T>(sums.m);
            if (mode != kNoMomentum) std::memcpy(d.sign + r * width, buf.new_bits.data(), width);
        }
    }
    if (!finite) return false;
    // Every row has read the old row and column factors: replace them.
    std::memcpy(d.row_v, row_sum_v.data(), n * sizeof(T));
    std::vector<double> col_v(m, 0.0), col_m(m, 0.0);
    for (int t = 0; t < threads; ++t) {
        const double* part = acc.data() + static_cast<size_t>(t) * 2 * m;
        for (int64_t c = 0; c < m; ++c) {
            col_v[c] += part[c];
            col_m[c] += part[m + c];
        }
    }
    normalize_columns(static_cast<T*>(d.col_v), col_v, m);
    if (mode != kNoMomentum) {
        std::memcpy(d.row_m, row_sum_m.data(), n * sizeof(T));
        normalize_columns(static_cast<T*>(d.col_m), col_m, m);
    }
    return true;
}

// The tensor's hyperparameters for its next step t (its counter + 1, in float32 as the state keeps it),
// with smmf.kernels.schedules' beta1_t = beta * growth^(t-1) and beta2_t = 1 - t^decay.
template <typename T>
Scalars<T> scalars(const Desc& d, const T* hp) {
    // hp slots as smmf.kernels.Hyperparameters: lr, beta, growth, decay, eps, wd_decoupled, wd_coupled, direction
    const T t = static_cast<T>(*d.step + 1.0f);
    Scalars<T> s;
    s.lr = hp[0];
    s.eps = hp[4];
    s.wd_coupled = hp[6];
    s.decay = T(1) - hp[0] * hp[5];
    s.direction = hp[7];
    s.beta1 = hp[1] * std::pow(hp[2], t - T(1));
    s.beta2 = T(1) - std::pow(t, hp[3]);
    s.one_minus_beta1 = T(1) - s.beta1;
    s.one_minus_beta2 = T(1) - s.beta2;
    s.step_seed = d.seed >= 0 ? static_cast<uint32_t>(mix(d.seed ^ mix(static_cast<int64_t>(t)))) : 0u;
    return s;
}

// A tensor with a seed rounds to bf16 stochastically (only bf16 tensors are given one).
template <typename P, typename T, int mode>
bool step_tensor_as(const Desc& d, const Scalars<T>& s, int threads) {
    if constexpr (std::is_same_v<P, uint16_t>) {
        if (d.seed >= 0) return step_tensor<P, T, mode, true>(d, s, threads);
    }
    return step_tensor<P, T, mode, false>(d, s, threads);
}

// Steps a tensor and counts the step as taken or skipped (a zero-size tensor always takes it).
template <typename P, typename T, int mode>
void step_and_count(const Desc& d, const T* hp, int threads) {
    const bool stepped = d.rows * d.cols == 0 || step_tensor_as<P, T, mode>(d, scalars(d, hp), threads);
    *(stepped ? d.step : d.skipped) += 1.0f;
}

// Small tensors a thread each, many at once; then large ones, each split by rows over the threads.
template <typename P, typename T, int mode>
void step_all(const Desc* descs, int64_t count, const T* hp, int threads) {
    std::vector<int64_t> small, large;
    for (int64_t i = 0; i < count; ++i) {
        (descs[i].rows * descs[i].cols < kParallelNumel ? small : large).push_back(i);
    }
    const int64_t n_small = static_cast<int64_t>(small.size());
#pragma omp parallel for num_threads(threads) schedule(dynamic) if (threads > 1 && n_small > 1)
    for (int64_t k = 0; k < n_small; ++k) step_and_count<P, T, mode>(descs[small[k]], hp, 1);
    for (const int64_t i : large) step_and_count<P, T, mode>(descs[i], hp, threads);
}

template <typename P, typename T>
void step_mode(const Desc* descs, int64_t count, const T* hp, int mode, int threads) {
    if (mode == kPacked) {
        step_all<P, T, kPacked>(descs, count, hp, threads);
    } else if (mode == kBytes) {
        step_all<P, T, kBytes>(descs, count, hp, threads);
    } else {
        step_all<P, T, kNoMomentum>(descs, count, hp, threads);
    }
}

}  // namespace

extern "C" {

int smmf_abi_version() { return 2; }

void smmf_step_float32(const Desc* descs, int64_t count, const float* hp, int mode, int threads) {
    step_mode<float, float>(descs, count, hp, mode, threads);
}

void smmf_step_float64(const Desc* descs, int64_t count, const double* hp, int mode, int threads) {
    step_mode<double, double>(descs, count, hp, mode, threads);
}

void smmf_step_bfloat16(const Desc* descs, int64_t count, const float* hp, int mode, int threads) {
    step_mode<uint16_t, float>(descs, count, hp, mode, threads);
}
}
