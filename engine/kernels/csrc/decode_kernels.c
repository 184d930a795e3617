/* Loopchat's compiled decode-step kernels (engine/kernels/native.py): batch-1 int8 and int4 weight x
 * 16-bit activation products, and the step's small elementwise parts (RMSNorm, rotary embedding).
 *
 * Why it exists: torch's CPU int8 kernel converts every weight to float before its FMA, which caps
 * it near 10 GB/s of weights per core on the development machine (AMD EPYC), while the same core
 * reads memory at ~20 GB/s. Integer multiply-add instructions (pmaddwd, or vpdpwssd with VNNI)
 * take 32 weights per instruction without a conversion, so the product streams at memory speed.
 * The int4 product reads torch's own packed CPU layout (the quantized-weights cache stays as it
 * is), unpacks nibbles with one byte permute per 64 bytes, and uses the same multiply-add.
 *
 * Numerics: the activations are rounded once to 16-bit integers per group of inputs (128 for
 * int8, the weights' own group for int4), with a power-of-two scale per group. For bfloat16 activations that rounding is exact for every value
 * within a factor of 256 of its group's largest (a bfloat16 carries 8 significant bits), and off by
 * at most 2^-16 of the group's largest otherwise. Products and group sums are exact 32-bit integer
 * arithmetic; groups are combined in float32, then the row's scale is applied and the result
 * rounded once to the output dtype.
 *
 * Threads: a small pool of our own, not OpenMP (torch ships its own OpenMP runtime, and two teams
 * would spin against each other). Rows are claimed in chunks from one atomic counter, so a thread
 * that another process has descheduled only delays the chunk it holds: the caller takes the rest.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define LC_ABI 5
#define GROUP 128 /* activation group of the int8 product */
#define MAX_THREADS 64
#define SPIN_ROUNDS 20000
#define SPIN_BURST 200
#define SPIN_NS 2000000LL

enum { DT_BF16 = 0, DT_F32 = 1 };
enum { KIND_INT8 = 0, KIND_INT4 = 1, KIND_INT4_WEIGHTS = 2 };
#define INT4_BLOCK 64 /* rows per block of torch's CPU int4 layout */

int lc_abi(void) { return LC_ABI; }

/* Which build (engine/kernels/native_variants.py) this CPU can run: 2 = AVX-512 F/BW/VL/DQ with VNNI and
 * VBMI, 1 = AVX2 with FMA, 0 = the baseline. Asked of the baseline build, which any x86-64 runs; the
 * compiler's CPU detection also checks that the operating system saves the wider registers. */
int lc_cpu_level(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi"))
        return 2;
    return 1;
#else
    return 0;
#endif
}

const char* lc_isa(void) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
    return "avx512-vnni-vbmi";
#elif defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return "avx512-vnni";
#elif defined(__AVX512BW__)
    return "avx512bw";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "scalar";
#endif
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* ---------------------------------------------------------------------------------------------
 * One row: sum over groups of (group scale * exact integer dot product of the group). */

static inline float row_dot(const int8_t* w, const int16_t* xq, const float* gscale, long k) {
    float total = 0.0f;
    long g0 = 0;
#if defined(__AVX512BW__)
    __m512 acc = _mm512_setzero_ps();
    for (; g0 + GROUP <= k; g0 += GROUP) {
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
        for (long i = g0; i < g0 + GROUP; i += 64) {
            __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + i)));
            __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + i + 32)));
            __m512i x0 = _mm512_loadu_si512((const void*)(xq + i));
            __m512i x1 = _mm512_loadu_si512((const void*)(xq + i + 32));
#if defined(__AVX512VNNI__)
            s0 = _mm512_dpwssd_epi32(s0, w0, x0);
            s1 = _mm512_dpwssd_epi32(s1, w1, x1);
#else
            s0 = _mm512_add_epi32(s0, _mm512_madd_epi16(w0, x0));
            s1 = _mm512_add_epi32(s1, _mm512_madd_epi16(w1, x1));
#endif
        }
        __m512 sum = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
        acc = _mm512_fmadd_ps(sum, _mm512_set1_ps(gscale[g0 / GROUP]), acc);
    }
    total = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (; g0 + GROUP <= k; g0 += GROUP) {
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        for (long i = g0; i < g0 + GROUP; i += 32) {
            __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + i)));
            __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + i + 16)));
            __m256i x0 = _mm256_loadu_si256((const __m256i*)(xq + i));
            __m256i x1 = _mm256_loadu_si256((const __m256i*)(xq + i + 16));
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(w0, x0));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(w1, x1));
        }
        __m256 sum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
        acc = _mm256_fmadd_ps(sum, _mm256_set1_ps(gscale[g0 / GROUP]), acc);
    }
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    total = _mm_cvtss_f32(half);
#endif
    /* Whole groups the vector code did not take, and a last partial group: plain C. */
    for (; g0 < k; g0 += GROUP) {
        long end = g0 + GROUP < k ? g0 + GROUP : k;
        int32_t s = 0;
        for (long i = g0; i < end; i++) s += (int32_t)w[i] * (int32_t)xq[i];
        total += (float)s * gscale[g0 / GROUP];
    }
    return total;
}

/* ---------------------------------------------------------------------------------------------
 * The job and the pool. */

#define MAX_PARTS 4 /* weights of one fused int4 product (q, k, v; gate, up) */

/* One int4 weight of a product: its rows are units first .. first + n / 64 - 1 of the job. */
typedef struct {
    const uint8_t* w4;      /* torch's CPU layout [n / 64][k][32] */
    const void* sz;         /* [k / group][n][2] scale and zero, sz_dtype */
    void* y;                /* its n outputs */
    long n;
    long first;
} Part;

typedef struct {
    int kind;
    const int8_t* w;        /* int8: [n, k] row-major */
    const float* scales;    /* int8: per row */
    int sz_dtype;           /* int4: the dtype of every part's scales and zeros */
    long group;             /* activation group (int4: the weights' group) */
    const int16_t* xq;
    const float* gscale;
    const int32_t* gsum;    /* int4: sum of xq per group */
    const int32_t* xpair;   /* int4: xq[2i] | xq[2i + 1] << 16 */
    void* y;
    int y_dtype;
    long k;
    long n;
    long chunk;             /* rows (int8) or 64-row blocks (int4) per claimed chunk */
    long units;             /* rows or blocks */
    Part parts[MAX_PARTS];  /* int4: the weights sharing x (written out: the one weight) */
    int n_parts;
    long row0;              /* int4 weights written out: the first row, a multiple of 64 */
    long y_cols;            /* int4 weights written out: rows written (y's row length) */
    long chunks;
} Job;

static Job job;
static atomic_ullong claim;  /* (generation << 32) | next chunk */
static atomic_long chunks_done;
static atomic_uint generation;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static atomic_int sleepers;
static atomic_int seats; /* helpers still wanted by the current job (the call's thread count - 1) */
static int n_workers;
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;

static inline void store_to(void* y, long r, float v) {
    if (job.y_dtype == DT_BF16)
        ((uint16_t*)y)[r] = f32_to_bf16(v);
    else
        ((float*)y)[r] = v;
}

static inline float sz_value(const void* sz, long n, long g, long r, int which) {
    long i = (g * n + r) * 2 + which;
    return job.sz_dtype == DT_BF16 ? bf16_to_f32(((const uint16_t*)sz)[i]) : ((const float*)sz)[i];
}

/* One 64-row block of the int4 product. torch's CPU layout keeps, per block and input column k,
 * 32 bytes whose low nibbles are rows 0-31 and high nibbles rows 32-63; columns k and k+1 are one
 * 64-byte line. Per group of the weights: integer sums of q * xq per row, then
 * w = (q - 8) * scale + zero gives  sum_k w x = xs * (scale * (sum q xq - 8 S) + zero * S)  with
 * S the group's sum of xq and xs its activation scale. */
static void int4_block(const Part* part, long b) {
    const long k = job.k, group = job.group, groups = k / group, r0 = b * INT4_BLOCK;
    const uint8_t* base = part->w4 + b * k * (INT4_BLOCK / 2);
    float out[INT4_BLOCK];
#if defined(__AVX512BW__) && defined(__AVX512VBMI__)
    /* byte 2i <- byte i (column k, row i), byte 2i+1 <- byte 32+i (column k+1, row i) */
    int8_t order[64];
    for (int i = 0; i < 32; i++) {
        order[2 * i] = (int8_t)i;
        order[2 * i + 1] = (int8_t)(32 + i);
    }
    const __m512i idx = _mm512_loadu_si512((const void*)order);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    const __m512i high16 = _mm512_set1_epi32((int)0xffff0000u);
    __m512 f[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (long g = 0; g < groups; g++) {
        __m512i a[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        for (long kk = g * group; kk < (g + 1) * group; kk += 2) {
            __m512i v = _mm512_loadu_si512((const void*)(base + kk * (INT4_BLOCK / 2)));
            __m512i lo = _mm512_permutexvar_epi8(idx, _mm512_and_si512(v, low4));
            __m512i hi = _mm512_permutexvar_epi8(idx, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
            __m512i xp = _mm512_set1_epi32(job.xpair[kk / 2]);
            __m512i w0 = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(lo));
            __m512i w1 = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(lo, 1));
            __m512i w2 = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(hi));
            __m512i w3 = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(hi, 1));
#if defined(__AVX512VNNI__)
            a[0] = _mm512_dpwssd_epi32(a[0], w0, xp);
            a[1] = _mm512_dpwssd_epi32(a[1], w1, xp);
            a[2] = _mm512_dpwssd_epi32(a[2], w2, xp);
            a[3] = _mm512_dpwssd_epi32(a[3], w3, xp);
#else
            a[0] = _mm512_add_epi32(a[0], _mm512_madd_epi16(w0, xp));
            a[1] = _mm512_add_epi32(a[1], _mm512_madd_epi16(w1, xp));
            a[2] = _mm512_add_epi32(a[2], _mm512_madd_epi16(w2, xp));
            a[3] = _mm512_add_epi32(a[3], _mm512_madd_epi16(w3, xp));
#endif
        }
        const int32_t sum = job.gsum[g];
        const __m512i offset = _mm512_set1_epi32(8 * sum);
        const __m512 s_f = _mm512_set1_ps((float)sum), xs = _mm512_set1_ps(job.gscale[g]);
        for (int q = 0; q < 4; q++) {
            long r = r0 + 16 * q;
            __m512 scale, zero;
            if (job.sz_dtype == DT_BF16) {
                __m512i pairs = _mm512_loadu_si512(
                    (const void*)((const uint16_t*)part->sz + (g * part->n + r) * 2));
                scale = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
                zero = _mm512_castsi512_ps(_mm512_and_si512(pairs, high16));
            } else {
                const float* p = (const float*)part->sz + (g * part->n + r) * 2;
                __m512 first = _mm512_loadu_ps(p), second = _mm512_loadu_ps(p + 16);
                const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8,
                                                      6, 4, 2, 0);
                const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
                scale = _mm512_permutex2var_ps(first, even, second);
                zero = _mm512_permutex2var_ps(first, odd, second);
            }
            __m512 t = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[q], offset));
            __m512 val = _mm512_fmadd_ps(t, scale, _mm512_mul_ps(zero, s_f));
            f[q] = _mm512_fmadd_ps(val, xs, f[q]);
        }
    }
    for (int q = 0; q < 4; q++) _mm512_storeu_ps(out + 16 * q, f[q]);
#else
    for (int j = 0; j < INT4_BLOCK; j++) out[j] = 0.0f;
    for (long g = 0; g < groups; g++) {
        const int32_t sum = job.gsum[g];
        for (int j = 0; j < INT4_BLOCK; j++) {
            int32_t acc = 0;
            for (long kk = g * group; kk < (g + 1) * group; kk++) {
                uint8_t byte = base[kk * (INT4_BLOCK / 2) + (j & 31)];
                acc += (int32_t)(j < 32 ? byte & 15 : byte >> 4) * job.xq[kk];
            }
            float scale = sz_value(part->sz, part->n, g, r0 + j, 0);
            float zero = sz_value(part->sz, part->n, g, r0 + j, 1);
            out[j] += job.gscale[g] * (scale * (float)(acc - 8 * sum) + zero * (float)sum);
        }
    }
#endif
    for (int j = 0; j < INT4_BLOCK; j++) store_to(part->y, r0 + j, out[j]);
}

/* One 64-row block of an int4 weight written out as float: w = (q - 8) * scale + zero (float32,
 * as engine/kernels/quant.py's dequantize_int4), rounded to y's dtype, into y = W^T [k][y_cols] (rows
 * row0.. of W), where the block's 64 rows of one input column are 64 consecutive values (what the
 * layout gives). */
static void int4_block_weights(long b) {
    const long k = job.k, n = job.y_cols, group = job.group, r0 = b * INT4_BLOCK;
    const long c0 = r0 - job.row0;
    const Part* part = &job.parts[0];
    const uint8_t* base = part->w4 + b * k * (INT4_BLOCK / 2);
    float scale[INT4_BLOCK], zero[INT4_BLOCK], w[INT4_BLOCK];
    for (long g = 0; g < k / group; g++) {
        for (int j = 0; j < INT4_BLOCK; j++) {
            scale[j] = sz_value(part->sz, part->n, g, r0 + j, 0);
            zero[j] = sz_value(part->sz, part->n, g, r0 + j, 1);
        }
        for (long kk = g * group; kk < (g + 1) * group; kk++) {
            const uint8_t* bytes = base + kk * (INT4_BLOCK / 2);
            for (int j = 0; j < INT4_BLOCK / 2; j++) {
                w[j] = ((float)(bytes[j] & 15) - 8.0f) * scale[j] + zero[j];
                w[j + 32] = ((float)(bytes[j] >> 4) - 8.0f) * scale[j + 32] + zero[j + 32];
            }
            if (job.y_dtype == DT_BF16) {
                uint16_t* out = (uint16_t*)job.y + kk * n + c0;
                for (int j = 0; j < INT4_BLOCK; j++) out[j] = f32_to_bf16(w[j]);
            } else {
                memcpy((float*)job.y + kk * n + c0, w, sizeof w);
            }
        }
    }
}

static void run_chunk(long c) {
    long u0 = c * job.chunk;
    long u1 = u0 + job.chunk < job.units ? u0 + job.chunk : job.units;
    if (job.kind == KIND_INT4) {
        int i = 0;
        for (long u = u0; u < u1; u++) {
            while (i + 1 < job.n_parts && u >= job.parts[i + 1].first) i++;
            int4_block(&job.parts[i], u - job.parts[i].first);
        }
        return;
    }
    if (job.kind == KIND_INT4_WEIGHTS) {
        for (long b = u0; b < u1; b++) int4_block_weights(job.row0 / INT4_BLOCK + b);
        return;
    }
    for (long r = u0; r < u1; r++)
        store_to(job.y, r, row_dot(job.w + r * job.k, job.xq, job.gscale, job.k) * job.scales[r]);
}

/* Claim and run chunks of generation `gen` until none is left. */
static void work(unsigned gen) {
    for (;;) {
        unsigned long long v = atomic_load(&claim);
        if ((unsigned)(v >> 32) != gen || (long)(v & 0xffffffffu) >= job.chunks) return;
        if (!atomic_compare_exchange_weak(&claim, &v, v + 1)) continue;
        run_chunk((long)(v & 0xffffffffu));
        atomic_fetch_add(&chunks_done, 1);
    }
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* A helper waits for the next job spinning for up to SPIN_NS, yielding its core between short
 * bursts so that another runnable thread (torch's own, another process) is not held off, then
 * sleeps. Waking a sleeping thread costs tens of microseconds (more in a VM); consecutive products
 * of a decode step come well within SPIN_NS of each other. */
static void* worker(void* arg) {
    (void)arg;
    unsigned seen = atomic_load(&generation);
    for (;;) {
        unsigned gen = seen;
        long long until = now_ns() + SPIN_NS;
        while ((gen = atomic_load(&generation)) == seen) {
            for (int i = 0; i < SPIN_BURST && atomic_load(&generation) == seen; i++) CPU_RELAX();
            if (now_ns() > until) break;
            sched_yield();
        }
        if (gen == seen) {
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((gen = atomic_load(&generation)) == seen) pthread_cond_wait(&wake, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = gen;
        if (atomic_fetch_sub(&seats, 1) > 0) work(gen);
    }
    return NULL;
}

/* A forked child has none of the parent's threads: it starts a pool of its own when it needs one. */
static void after_fork_in_child(void) {
    n_workers = 0;
    atomic_store(&sleepers, 0);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_mutex_init(&call_lock, NULL);
}

static int ensure_workers(int wanted) {
    static int fork_handler;
    if (!fork_handler) fork_handler = pthread_atfork(NULL, NULL, after_fork_in_child) == 0;
    if (wanted > MAX_THREADS - 1) wanted = MAX_THREADS - 1;
    while (n_workers < wanted) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, worker, NULL);
        pthread_attr_destroy(&attr);
        if (failed) break;
        n_workers++;
    }
    return n_workers;
}

/* ---------------------------------------------------------------------------------------------
 * Entry points. Calls from several threads run one after another (call_lock). They return 0, -1
 * for arguments they cannot take, -2 when out of memory.
 */
static void* scratch;
static size_t scratch_bytes;

static inline float x_at(const void* x, int x_dtype, long i) {
    return x_dtype == DT_BF16 ? bf16_to_f32(((const uint16_t*)x)[i]) : ((const float*)x)[i];
}

#if defined(__AVX512F__)
static inline __m512 x16(const void* x, int x_dtype, long i) {
    if (x_dtype == DT_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i*)((const uint16_t*)x + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_loadu_ps((const float*)x + i);
}
#endif

/* Round x[g0:end] to int16 with a power-of-two scale (stored in *scale); returns the sum of the
 * integers. A NaN or infinity in the group makes the scale NaN or infinite and the integers 0, so
 * the product comes out NaN, as float arithmetic would have it. */
static int32_t quantize_group(const void* x, int x_dtype, long g0, long end, int16_t* xq,
                              float* scale) {
    float big = 0.0f;
    long i = g0;
#if defined(__AVX512F__)
    __m512 most = _mm512_setzero_ps();
    __mmask16 nan = 0;
    for (; i + 16 <= end; i += 16) {
        __m512 v = x16(x, x_dtype, i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        most = _mm512_max_ps(most, _mm512_abs_ps(v));
    }
    big = nan ? NAN : _mm512_reduce_max_ps(most);
#endif
    for (; i < end; i++) {
        float a = fabsf(x_at(x, x_dtype, i));
        if (a > big || a != a) big = a; /* NaN propagates below */
    }
    if (!isfinite(big)) {
        *scale = big;
        for (i = g0; i < end; i++) xq[i] = 0;
        return 0;
    }
    int e = 0;
    if (big > 0.0f) frexpf(big, &e); /* big < 2^e */
    *scale = ldexpf(1.0f, e - 15);
    const float inv = ldexpf(1.0f, 15 - e);
    int32_t sum = 0;
    i = g0;
#if defined(__AVX512F__)
    __m512i total = _mm512_setzero_si512();
    const __m512i top = _mm512_set1_epi32(32767), bottom = _mm512_set1_epi32(-32767);
    for (; i + 16 <= end; i += 16) {
        /* the default rounding mode: to nearest, ties to even, as nearbyintf */
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x16(x, x_dtype, i), _mm512_set1_ps(inv)));
        q = _mm512_max_epi32(_mm512_min_epi32(q, top), bottom);
        _mm256_storeu_si256((__m256i*)(xq + i), _mm512_cvtepi32_epi16(q));
        total = _mm512_add_epi32(total, q);
    }
    sum = _mm512_reduce_add_epi32(total);
#endif
    for (; i < end; i++) {
        float q = nearbyintf(x_at(x, x_dtype, i) * inv);
        xq[i] = (int16_t)(q > 32767.0f ? 32767.0f : (q < -32767.0f ? -32767.0f : q));
        sum += xq[i];
    }
    return sum;
}

/* Round x to 16-bit integers per group (power-of-two scales), with each group's integer sum and
 * the (even, odd) pairs the int4 product broadcasts. Caller holds call_lock. */
static int quantize_x(const void* x, int x_dtype, long k, long group) {
    long groups = (k + group - 1) / group;
    size_t need = (size_t)k * 2 + (size_t)groups * 8 + (size_t)(k / 2 + 1) * 4 + 256;
    if (need > scratch_bytes) {
        void* grown = realloc(scratch, need);
        if (!grown) return -2;
        scratch = grown;
        scratch_bytes = need;
    }
    int16_t* xq = (int16_t*)scratch;
    float* gscale = (float*)(((uintptr_t)(xq + k) + 63) & ~(uintptr_t)63);
    int32_t* gsum = (int32_t*)(gscale + groups);
    for (long g = 0; g < groups; g++) {
        long g0 = g * group, end = g0 + group < k ? g0 + group : k;
        gsum[g] = quantize_group(x, x_dtype, g0, end, xq, &gscale[g]);
    }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const int32_t* xpair = (const int32_t*)xq; /* xq[2i] | xq[2i + 1] << 16, as stored */
#else
    int32_t* xpair = gsum + groups;
    for (long i = 0; i + 1 < k; i += 2)
        xpair[i / 2] = (int32_t)((uint32_t)(uint16_t)xq[i] | ((uint32_t)(uint16_t)xq[i + 1] << 16));
#endif
    job.xq = xq;
    job.gscale = gscale;
    job.gsum = gsum;
    job.xpair = xpair;
    return 0;
}

/* Hand the prepared job's chunks to the pool and take part; returns when all are done. */
static void run_job(int threads) {
    long chunk = (job.units + 8L * threads - 1) / (8L * threads); /* ~8 chunks per thread */
    long least = job.kind == KIND_INT8 ? 4 : 1;
    job.chunk = chunk < least ? least : chunk;
    job.chunks = (job.units + job.chunk - 1) / job.chunk;
    int helpers = threads > 1 && job.chunks > 1 ? ensure_workers(threads - 1) : 0;
    unsigned gen = atomic_load(&generation) + 1;
    atomic_store(&seats, helpers);
    atomic_store(&chunks_done, 0);
    atomic_store(&claim, (unsigned long long)gen << 32);
    atomic_store(&generation, gen);
    if (helpers && atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    work(gen);
    /* Chunks a helper claimed and still runs; yield the core if it was taken from under us. */
    for (long spins = 0; atomic_load(&chunks_done) < job.chunks; spins++) {
        if (spins < SPIN_ROUNDS) CPU_RELAX();
        else sched_yield();
    }
}

static int dtypes_ok(int x_dtype, int y_dtype) {
    return (x_dtype == DT_BF16 || x_dtype == DT_F32) && (y_dtype == DT_BF16 || y_dtype == DT_F32);
}

/* Run one product described by `request` (weights, output, sizes; group = activation group):
 * under call_lock it becomes the pool's job, x is rounded, and the chunks are run. */
static int submit(const Job* request, const void* x, int x_dtype, int threads) {
    if (request->n <= 0 || request->k <= 0 || request->n >= (1L << 31) || threads < 1 ||
        !dtypes_ok(x_dtype, request->y_dtype))
        return -1;
    pthread_mutex_lock(&call_lock);
    job = *request;
    int rc = quantize_x(x, x_dtype, job.k, job.group);
    if (rc == 0) run_job(threads);
    pthread_mutex_unlock(&call_lock);
    return rc;
}

/* y[r] = scales[r] * sum_i w[r, i] * x[i] for r < n: w int8 [n, k] row-major, scales float32, x and
 * y bfloat16 or float32, at most `threads` threads (the caller's included). */
int lc_int8_matvec(const int8_t* w, const float* scales, const void* x, int x_dtype, void* y,
                   int y_dtype, long n, long k, int threads) {
    Job request = {.kind = KIND_INT8, .w = w, .scales = scales, .group = GROUP, .y = y,
                   .y_dtype = y_dtype, .k = k, .n = n, .units = n};
    return submit(&request, x, x_dtype, threads);
}

/* y_i = x W_i^T for `count` int4 weights that read the same x (a layer's q, k and v; its gate and
 * up projections), as one job: x is rounded once and one hand-out of 64-row blocks covers them all,
 * so the short k and v products do not each pay a wake-up and a tail of their own. Each W_i is in
 * torch's CPU int4 layout (`_convert_weight_to_int4pack_for_cpu`, [n_i / 64][k][32] bytes) with
 * scales_zeros [k / group][n_i][2] (bfloat16 or float32): w = (q - 8) * scale + zero. Every n_i
 * must be a multiple of 64, k of group, group even and at most 256. */
int lc_int4_matvec_many(int count, const uint8_t* const* w, const void* const* scales_zeros,
                        void* const* y, const long* n, int sz_dtype, long group, const void* x,
                        int x_dtype, int y_dtype, long k, int threads) {
    if (count < 1 || count > MAX_PARTS || group <= 0 || group > 256 || group % 2 || k <= 0 ||
        k % group || (sz_dtype != DT_BF16 && sz_dtype != DT_F32))
        return -1;
    Job request = {.kind = KIND_INT4, .sz_dtype = sz_dtype, .group = group, .y_dtype = y_dtype,
                   .k = k, .n_parts = count};
    for (int i = 0; i < count; i++) {
        if (n[i] <= 0 || n[i] % INT4_BLOCK) return -1;
        request.parts[i] = (Part){.w4 = w[i], .sz = scales_zeros[i], .y = y[i], .n = n[i],
                                  .first = request.units};
        request.units += n[i] / INT4_BLOCK;
        request.n += n[i];
    }
    return submit(&request, x, x_dtype, threads);
}

/* The same for one weight. */
int lc_int4_matvec(const uint8_t* w, const void* scales_zeros, int sz_dtype, long group,
                   const void* x, int x_dtype, void* y, int y_dtype, long n, long k, int threads) {
    return lc_int4_matvec_many(1, &w, &scales_zeros, &y, &n, sz_dtype, group, x, x_dtype, y_dtype,
                               k, threads);
}

/* Rows row0 .. row0 + rows of the float weight of an int4 layer in torch's CPU layout, written out
 * transposed as y [k][rows] (bfloat16 or float32), for a prefill chunk's GEMM: torch's int4 kernel
 * takes ~2.4x as long for 512 rows as a bfloat16 GEMM, and writing the weight out costs a fraction
 * of that GEMM. row0 and rows are multiples of 64; the layout rules are lc_int4_matvec's. */
int lc_int4_weights(const uint8_t* w, const void* scales_zeros, int sz_dtype, long group, void* y,
                    int y_dtype, long n, long k, long row0, long rows, int threads) {
    if (n <= 0 || n % INT4_BLOCK || n >= (1L << 31) || k <= 0 || group <= 0 || group % 2 ||
        k % group || threads < 1 || !dtypes_ok(sz_dtype, y_dtype) || row0 < 0 || rows <= 0 ||
        row0 % INT4_BLOCK || rows % INT4_BLOCK || row0 + rows > n)
        return -1;
    pthread_mutex_lock(&call_lock);
    job = (Job){.kind = KIND_INT4_WEIGHTS, .sz_dtype = sz_dtype, .group = group, .y = y,
                .y_dtype = y_dtype, .k = k, .n = n, .row0 = row0, .y_cols = rows,
                .units = rows / INT4_BLOCK, .n_parts = 1};
    job.parts[0] = (Part){.w4 = w, .sz = scales_zeros, .n = n};
    run_job(threads);
    pthread_mutex_unlock(&call_lock);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The step's small parts. Why in C: in a decode step each is a dozen torch ops on a few thousand
 * numbers, and right after a product has streamed hundreds of megabytes through the caches each op
 * runs cold: an RMSNorm of 2048 values took ~50 us and a rotary ~45 us (TinyLlama shape, AMD EPYC),
 * 4-5 ms of a 34 ms int4 step. Here each is one call of ~10 us. Both compute exactly what
 * engine/model/transformer.py's torch code computes (same float32 operations in the same order, rounded to the
 * activation dtype at the same points); only the RMSNorm's sum of squares is added in another
 * order. They run on the calling thread and touch no shared state. */

enum { DT_F16 = 2 }; /* the small ops also take float16 (the products read it as float32) */

static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    uint32_t u;
    if (exponent == 0x1f) { /* inf, NaN */
        u = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent) { /* normal: rebias 15 -> 127 */
        u = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else { /* zero or subnormal: mantissa * 2^-24, exact in float32 */
        const float magnitude = (float)mantissa * 0x1p-24f;
        memcpy(&u, &magnitude, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float32 -> float16, round to nearest even, as torch's conversion. */
static inline uint16_t f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;   /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00u;  /* at or past halfway above 65504: inf */
    if (a >= 0x38800000u) {                       /* normal in float16 (>= 2^-14) */
        uint32_t r = a - 0x38000000u;             /* rebias 127 -> 15 */
        r += 0xfffu + ((r >> 13) & 1u);           /* round to nearest even; may carry up */
        return sign | (uint16_t)(r >> 13);
    }
    float magnitude;                              /* subnormal: units of 2^-24, rounded */
    memcpy(&magnitude, &a, 4);
    return sign | (uint16_t)rintf(magnitude * 0x1p24f); /* 1024 is the smallest normal: right */
}

static inline float load_at(const void* p, int dtype, long i) {
    switch (dtype) {
        case DT_BF16: return bf16_to_f32(((const uint16_t*)p)[i]);
        case DT_F16: return f16_to_f32(((const uint16_t*)p)[i]);
        default: return ((const float*)p)[i];
    }
}

static inline void store_at(void* p, int dtype, long i, float v) {
    switch (dtype) {
        case DT_BF16: ((uint16_t*)p)[i] = f32_to_bf16(v); break;
        case DT_F16: ((uint16_t*)p)[i] = f32_to_f16(v); break;
        default: ((float*)p)[i] = v;
    }
}

/* v rounded to dtype and back, as a torch `.to(dtype)` between two float32 steps. */
static inline float round_to(int dtype, float v) {
    switch (dtype) {
        case DT_BF16: return bf16_to_f32(f32_to_bf16(v));
        case DT_F16: return f16_to_f32(f32_to_f16(v));
        default: return v;
    }
}

static inline int ops_dtype_ok(int dtype) {
    return dtype == DT_BF16 || dtype == DT_F32 || dtype == DT_F16;
}

/* y[r] = weight * to_dtype(x[r] / sqrt(mean(x[r]^2) + eps)), in float32, for `rows` rows of `dim`
 * values (x, weight and y all of one dtype): RMSNorm as Llama's reference computes it. */
int lc_rms_norm(const void* x, const void* weight, void* y, int dtype, long rows, long dim,
                float eps) {
    if (!ops_dtype_ok(dtype) || rows < 0 || dim <= 0) return -1;
    for (long r = 0; r < rows; r++) {
        const long base = r * dim;
        float partial[16] = {0};
        long i = 0;
        for (; i + 16 <= dim; i += 16)
            for (int j = 0; j < 16; j++) {
                const float v = load_at(x, dtype, base + i + j);
                partial[j] += v * v;
            }
        float squares = 0.0f;
        for (int j = 0; j < 16; j++) squares += partial[j];
        for (; i < dim; i++) {
            const float v = load_at(x, dtype, base + i);
            squares += v * v;
        }
        const float inverse = 1.0f / sqrtf(squares / (float)dim + eps);
        for (i = 0; i < dim; i++) {
            const float normed = round_to(dtype, load_at(x, dtype, base + i) * inverse);
            store_at(y, dtype, base + i, load_at(weight, dtype, i) * normed);
        }
    }
    return 0;
}

/* Rotary position embedding of x [tokens, heads, dim] at positions start.. into y (same shape and
 * dtype): each pair (a, b) becomes (a cos - b sin, a sin + b cos) in float32 with cos and sin the
 * float32 tables [positions, dim / 2]. Pairs are (2i, 2i + 1) if interleaved (Meta's layout), else
 * (i, i + dim / 2) (Hugging Face's). */
int lc_rotary(const void* x, void* y, int dtype, const float* cos_table, const float* sin_table,
              long start, long tokens, long heads, long dim, int interleaved) {
    if (!ops_dtype_ok(dtype) || dim <= 0 || dim % 2 || start < 0) return -1;
    const long half = dim / 2;
    for (long t = 0; t < tokens; t++) {
        const float* c = cos_table + (start + t) * half;
        const float* s = sin_table + (start + t) * half;
        for (long h = 0; h < heads; h++) {
            const long base = (t * heads + h) * dim;
            for (long i = 0; i < half; i++) {
                const long ia = interleaved ? base + 2 * i : base + i;
                const long ib = interleaved ? ia + 1 : ia + half;
                const float a = load_at(x, dtype, ia), b = load_at(x, dtype, ib);
                const float a_cos = a * c[i], b_sin = b * s[i], a_sin = a * s[i], b_cos = b * c[i];
                store_at(y, dtype, ia, a_cos - b_sin);
                store_at(y, dtype, ib, a_sin + b_cos);
            }
        }
    }
    return 0;
}
