/* Loopchat's compiled decode-step kernels (engine/kernels/native.py): batch-1 int8 and int4 weight x
 * 16-bit activation products, products of a GGUF file's own blocks (Q8_0, Q4_0, Q4_K, Q6_K) with
 * 8-bit activations for one or more rows (at the end of this file), and the step's small
 * elementwise parts (RMSNorm, rotary embedding).
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
/* The AVX2 build converts GGUF blocks' float16 scales with F16C (lc_cpu_level asks for it too). */
#if defined(__AVX2__) && !defined(__F16C__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("f16c")
#endif

#define LC_ABI 8
#define GROUP 128 /* activation group of the int8 product */
#define MAX_THREADS 64
#define SPIN_ROUNDS 20000
#define SPIN_BURST 200
#define SPIN_NS 2000000LL

enum { DT_BF16 = 0, DT_F32 = 1 };
enum { KIND_INT8 = 0, KIND_INT4 = 1, KIND_INT4_WEIGHTS = 2, KIND_GGUF = 3, KIND_GGUF_WEIGHTS = 4,
       KIND_ATTENTION = 5 };
#define INT4_BLOCK 64 /* rows per block of torch's CPU int4 layout */

int lc_abi(void) { return LC_ABI; }

/* Which build (engine/kernels/native_variants.py) this CPU can run: 2 = AVX-512 F/BW/VL/DQ with VNNI and
 * VBMI, 1 = AVX2 with FMA, 0 = the baseline. Asked of the baseline build, which any x86-64 runs; the
 * compiler's CPU detection also checks that the operating system saves the wider registers. */
int lc_cpu_level(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* F16C: the AVX2 build converts GGUF blocks' float16 scales with it (every AVX2 CPU has it) */
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c")))
        return 0;
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

#define MAX_PARTS 4 /* weights of one fused int4 or GGUF product (q, k, v; gate, up) */
#define GG_TILE_MIN 8 /* rows of x from which 4-bit GGUF weights go in tiles of 8 rows */

/* One int4 weight of a product: its rows are units first .. first + n / 64 - 1 of the job.
 * A GGUF weight: its rows are units first .. first + n - 1. */
typedef struct {
    const uint8_t* w4;      /* torch's CPU layout [n / 64][k][32]; GGUF: [n][row_bytes] blocks */
    int qtype;              /* GGUF: the ggml type of the blocks */
    long row_bytes;         /* GGUF: bytes per row */
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
    const int8_t* xq8;      /* GGUF: x [m][k] rounded to 8 bits per 32 (scales gscale, sums gsum) */
    const int16_t* gsum16;  /* GGUF: sums of xq8 per 16 (Q6_K's per-16 scales) */
    const int8_t* xq8p;     /* GGUF: xq8 with blocks paired for Q4_0 (gg_pair_blocks) */
    long m;                 /* GGUF: rows of x (and of each y) */
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

static void gguf_rows(const Part* part, long r0, long r1);
static void gguf_weights_tile(long t);
static void attend_kv_head(long g);

static void run_chunk(long c) {
    long u0 = c * job.chunk;
    long u1 = u0 + job.chunk < job.units ? u0 + job.chunk : job.units;
    if (job.kind == KIND_GGUF) {
        int i = 0;
        for (long u = u0; u < u1;) {
            while (i + 1 < job.n_parts && u >= job.parts[i + 1].first) i++;
            const Part* part = &job.parts[i];
            long end = part->first + part->n < u1 ? part->first + part->n : u1;
            gguf_rows(part, u - part->first, end - part->first);
            u = end;
        }
        return;
    }
    if (job.kind == KIND_GGUF_WEIGHTS) {
        for (long t = u0; t < u1; t++) gguf_weights_tile(t);
        return;
    }
    if (job.kind == KIND_ATTENTION) {
        for (long g = u0; g < u1; g++) attend_kv_head(g);
        return;
    }
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
#elif defined(__AVX2__)
static inline __m256 x8(const void* x, int x_dtype, long i) {
    if (x_dtype == DT_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)x + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float*)x + i);
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
#elif defined(__AVX2__)
    /* the same in 8 lanes (the GGUF products round x per 32 inputs, many groups per call) */
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 most = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    for (; i + 8 <= end; i += 8) {
        __m256 v = x8(x, x_dtype, i);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        most = _mm256_max_ps(most, _mm256_and_ps(v, magnitude));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    big = _mm256_movemask_ps(nan) ? NAN : _mm_cvtss_f32(m4);
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
#elif defined(__AVX2__)
    __m256i total = _mm256_setzero_si256();
    const __m256i top = _mm256_set1_epi32(32767), bottom = _mm256_set1_epi32(-32767);
    for (; i + 8 <= end; i += 8) {
        /* the default rounding mode: to nearest, ties to even, as nearbyintf */
        __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(x8(x, x_dtype, i), _mm256_set1_ps(inv)));
        q = _mm256_max_epi32(_mm256_min_epi32(q, top), bottom);
        _mm_storeu_si128((__m128i*)(xq + i), _mm_packs_epi32(_mm256_castsi256_si128(q),
                                                             _mm256_extracti128_si256(q, 1)));
        total = _mm256_add_epi32(total, q);
    }
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
    sum = _mm_cvtsi128_si32(t4);
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
    long least = job.kind == KIND_INT8 || job.kind == KIND_GGUF ? 4 : 1;
    job.chunk = chunk < least ? least : chunk;
    if (job.kind == KIND_GGUF && job.m >= GG_TILE_MIN) job.chunk = (job.chunk + 7) / 8 * 8; /* whole tiles */
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

/* ---------------------------------------------------------------------------------------------
 * GGUF weights: a model file's own quantized blocks (llama.cpp's ggml types), read in place.
 *
 * Each weight row is `row_bytes` bytes of blocks (layouts: docs in engine/kernels/gguf_linear.py):
 *   Q8_0 (8):  32 weights in 34 bytes: float16 d, int8 q[32];            w = d * q
 *   Q4_0 (2):  32 weights in 18 bytes: float16 d, u8 qs[16];             w = d * (nibble - 8)
 *              weight j < 16 is the low nibble of qs[j], weight j + 16 its high nibble
 *   Q4_K (12): 256 weights in 144 bytes: float16 d, dmin, u8 scales[12] (8 six-bit scales and 8
 *              six-bit mins), u8 qs[128]; sub-block j of 32: w = (d * sc_j) * q - (dmin * m_j),
 *              the low nibbles of qs[32i .. 32i + 31] are sub-block 2i, the high ones 2i + 1
 *   Q6_K (14): 256 weights in 210 bytes: u8 ql[128], u8 qh[64], int8 scales[16], float16 d;
 *              w = (d * scales[j / 16]) * (q - 32), q six bits: four from ql, two from qh
 * The product rounds x to 8-bit integers per 32 inputs as llama.cpp does (its Q8_0 rule: scale
 * max|x| / 127 in float32, so each input is off by at most max|x_b| / 254), multiplies them by the
 * blocks' integers exactly (AVX2: maddubs on unsigned nibbles, or on |w| with w's sign moved onto x,
 * then madd; AVX-512 VNNI: vpdpbusd, the same sums) and applies each block's (or sub-block's) float
 * scale in float32, eight groups at a time. Each weight row is unpacked once for up to GG_ROWS rows
 * of x (a verify pass, a prefill chunk), so it comes from memory once; Q4_0 and Q4_K unpack 8
 * weight rows at a time, rows in the lanes, for every row of x (gg_tile_rows). Why 8 bits: a maddubs takes
 * 32 weights where pmaddwd takes 16, which matters where the product is compute-bound (several
 * rows); a decode step streams weights at memory speed either way. Writing weights out
 * computes exactly what gguf-py's dequantize computes (float32, the same products in the same
 * order; no fused multiply-add: the build is ISO C, where GCC contracts nothing). */

enum { GG_Q4_0 = 2, GG_Q8_0 = 8, GG_Q4_K = 12, GG_Q6_K = 14 };
#define GG_GROUP 32 /* activation group: one Q4_0/Q8_0 block, one Q4_K sub-block */
#define GG_TILE 16  /* rows per unit when weights are written out */
#define GG_ROWS 8   /* rows of x per pass over a weight row */
/* Bytes ahead of the span being multiplied that a product asks the cache for. The hardware
 * prefetcher alone left a decode step's cold weights streaming at ~19 GB/s on an AMD EPYC (Zen 3,
 * 2 threads; torch's sum reads ~34); asking 4 KB ahead made the TinyLlama-shaped products 12-20 %
 * faster (Q4_0 33.9 -> 41 G weights/s, Q8_0 23.6 -> 29; 0.5-8 KB measured). A prefetch never
 * faults, so the last rows may ask past the weight's end. */
#define GG_AHEAD 4096

static inline float gg_half(const uint8_t* p) {
    uint16_t h;
    memcpy(&h, p, 2);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}

static int gg_block(int qtype, long* weights, long* bytes) {
    switch (qtype) {
        case GG_Q8_0: *weights = 32; *bytes = 34; return 0;
        case GG_Q4_0: *weights = 32; *bytes = 18; return 0;
        case GG_Q4_K: *weights = 256; *bytes = 144; return 0;
        case GG_Q6_K: *weights = 256; *bytes = 210; return 0;
        default: return -1;
    }
}

/* Q4_K's six-bit scale and min of sub-block j (llama.cpp's get_scale_min_k4). */
static inline void q4k_scale_min(const uint8_t* s, int j, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Group g (32 weights) of a row as integers q and float scales: w_i = scale[i / 16] * q_i - min,
 * each product and difference a float32 operation as gguf-py computes it. */
static void gg_group(int qtype, const uint8_t* row, long g, int8_t q[32], float scale[2],
                     float* min) {
    *min = 0.0f;
    switch (qtype) {
        case GG_Q8_0: {
            const uint8_t* p = row + 34 * g;
            scale[0] = scale[1] = gg_half(p);
            memcpy(q, p + 2, 32);
            return;
        }
        case GG_Q4_0: {
            const uint8_t* p = row + 18 * g;
            scale[0] = scale[1] = gg_half(p);
            for (int j = 0; j < 16; j++) {
                q[j] = (int8_t)((p[2 + j] & 15) - 8);
                q[j + 16] = (int8_t)((p[2 + j] >> 4) - 8);
            }
            return;
        }
        case GG_Q4_K: {
            const uint8_t* p = row + 144 * (g / 8);
            const int j = (int)(g % 8);
            int sc, m;
            q4k_scale_min(p + 4, j, &sc, &m);
            scale[0] = scale[1] = gg_half(p) * (float)sc;
            *min = gg_half(p + 2) * (float)m;
            const uint8_t* qs = p + 16 + 32 * (j / 2);
            for (int i = 0; i < 32; i++) q[i] = (int8_t)(j % 2 ? qs[i] >> 4 : qs[i] & 15);
            return;
        }
        case GG_Q6_K: {
            const uint8_t* p = row + 210 * (g / 8);
            const int j = (int)(g % 8); /* 32 weights: position 32j in the superblock */
            const int h = j / 4, part = j % 4; /* half of 128, and which quarter of it */
            const uint8_t* ql = p + 64 * h + (part % 2) * 32;
            const uint8_t* qh = p + 128 + 32 * h;
            const int8_t* sc = (const int8_t*)(p + 192);
            const float d = gg_half(p + 208);
            scale[0] = d * (float)sc[2 * j];
            scale[1] = d * (float)sc[2 * j + 1];
            for (int i = 0; i < 32; i++) {
                int low = part < 2 ? ql[i] & 15 : ql[i] >> 4;
                int high = (qh[i] >> (2 * part)) & 3;
                q[i] = (int8_t)((low | (high << 4)) - 32);
            }
            return;
        }
    }
}

#if defined(__AVX2__)
static inline float gg_hsum(__m256 v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_movehdup_ps(half));
    return _mm_cvtss_f32(half);
}
#define LD16(p) _mm256_loadu_si256((const __m256i*)(p))
#define U8X16(p) _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(p)))
#define I8X16(p) _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p)))
#endif

#if defined(__AVX2__)
/* Lane totals of eight vectors a0..a7 as one vector [sum a0, ..., sum a7], from the pairwise sums
 * s01 = hadd(a0, a1), s23, s45, s67 (taken as soon as each pair is there, so few stay live). Why:
 * a block's scale applied per block costs a conversion, a broadcast and an FMA for every 32
 * weights; summed eight blocks at a time, one conversion and one FMA take a vector of 8 scales. */
static inline __m256i gg_join8(__m256i s01, __m256i s23, __m256i s45, __m256i s67) {
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

static inline __m256i gg_isum8(const __m256i* a) {
    return gg_join8(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]),
                    _mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
}

/* The float16 d of eight consecutive blocks of `stride` bytes (d at each block's start), packed
 * with scalar loads (a gather is slower on AMD Zen 3, and eight 2-byte stores read back as one
 * vector stall store forwarding). */
static inline uint64_t gg_d4(const uint8_t* p, int stride) {
    uint64_t v = 0;
    for (int i = 3; i >= 0; i--) {
        uint16_t h;
        memcpy(&h, p + i * stride, 2);
        v = (v << 16) | h;
    }
    return v;
}

static inline __m256 gg_d8(const uint8_t* p, int stride) {
    const uint64_t first = gg_d4(p, stride), last = gg_d4(p + 4 * stride, stride);
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)last, (long long)first));
}

#endif

/* x rounded to 8-bit integers per group of 32 inputs, llama.cpp's Q8_0 rule: scale d = max|x| / 127
 * (float32), q = x * (127 / max|x|) rounded to nearest even; with each group's integer sum (Q4_0's
 * offset of 8, Q4_K's mins). A NaN or infinity in a group makes d NaN or infinite and q 0, so the
 * products come out NaN as float arithmetic would have it. Row t of x is xq8 + t * k, its scales
 * and sums at t * (k / 32). */
#if defined(__AVX2__)
static inline __m256 gg_x8(const void* x, int x_dtype, long i) {
    if (x_dtype == DT_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)x + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float*)x + i);
}
#endif

static void gg_quantize_row(const void* x, int x_dtype, long k, int8_t* q, float* d,
                            int32_t* sum, int16_t* sum16) {
    for (long g = 0; g < k / GG_GROUP; g++) {
        const long g0 = g * GG_GROUP;
        float big;
#if defined(__AVX2__)
        const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 v[4], most = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int c = 0; c < 4; c++) {
            v[c] = gg_x8(x, x_dtype, g0 + 8 * c);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[c], v[c], _CMP_UNORD_Q));
            most = _mm256_max_ps(most, _mm256_and_ps(v[c], magnitude));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(most), _mm256_extractf128_ps(most, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        big = _mm256_movemask_ps(nan) ? NAN : _mm_cvtss_f32(m4);
#else
        big = 0.0f;
        for (long i = g0; i < g0 + GG_GROUP; i++) {
            float a = fabsf(x_at(x, x_dtype, i));
            if (a > big || a != a) big = a;
        }
#endif
        if (!isfinite(big)) {
            d[g] = big;
            sum[g] = 0;
            sum16[2 * g] = sum16[2 * g + 1] = 0;
            memset(q + g0, 0, GG_GROUP);
            continue;
        }
        d[g] = big / 127.0f;
        const float inv = big > 0.0f ? 127.0f / big : 0.0f;
#if defined(__AVX2__)
        /* the default rounding mode: to nearest, ties to even, as nearbyintf */
        const __m256 scale = _mm256_set1_ps(inv);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], scale));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], scale));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], scale));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], scale));
        /* the sums of the first and the second 16, side by side */
        __m256i halves = _mm256_hadd_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
        t4 = _mm_hadd_epi32(t4, t4); /* [first, second, first, second] */
        sum16[2 * g] = (int16_t)_mm_cvtsi128_si32(t4);
        sum16[2 * g + 1] = (int16_t)_mm_extract_epi32(t4, 1);
        sum[g] = sum16[2 * g] + sum16[2 * g + 1];
        /* packs interleave the 128-bit lanes: 0 1 4 5 2 3 6 7 in 4-byte units, put back in order */
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i*)(q + g0), b);
#else
        int32_t s[2] = {0, 0};
        for (long i = g0; i < g0 + GG_GROUP; i++) {
            float r = nearbyintf(x_at(x, x_dtype, i) * inv);
            q[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
            s[(i - g0) / 16] += q[i];
        }
        sum16[2 * g] = (int16_t)s[0];
        sum16[2 * g + 1] = (int16_t)s[1];
        sum[g] = s[0] + s[1];
#endif
    }
}

/* One row of rounded x with its blocks in pairs, as the Q4_0 product reads them: of blocks 2j and
 * 2j + 1 first the two low halves (inputs 0-15 of each), then the two high halves (16-31), so that
 * the nibbles of two blocks loaded side by side meet their inputs with one mask or one shift. */
static void gg_pair_blocks(const int8_t* q, long k, int8_t* paired) {
    long i = 0;
    for (; i + 64 <= k; i += 64) {
        memcpy(paired + i, q + i, 16);
        memcpy(paired + i + 16, q + i + 32, 16);
        memcpy(paired + i + 32, q + i + 16, 16);
        memcpy(paired + i + 48, q + i + 48, 16);
    }
    memcpy(paired + i, q + i, (size_t)(k - i));
}

/* Round the m rows of x [m][k] (job.xq8 / gscale / gsum / gsum16, and xq8p). Caller holds
 * call_lock. */
static int gg_quantize_x(const void* x, int x_dtype, long m, long k) {
    const long groups = k / GG_GROUP;
    size_t need = 2 * (size_t)m * (size_t)k + (size_t)m * groups * 12 + 256;
    if (need > scratch_bytes) {
        void* grown = realloc(scratch, need);
        if (!grown) return -2;
        scratch = grown;
        scratch_bytes = need;
    }
    int8_t* xq = (int8_t*)scratch;
    float* xs = (float*)(((uintptr_t)(xq + m * k) + 63) & ~(uintptr_t)63);
    int32_t* gsum = (int32_t*)(xs + m * groups);
    int16_t* gsum16 = (int16_t*)(gsum + m * groups);
    int8_t* paired = (int8_t*)(gsum16 + m * 2 * groups);
    int pairs = 0; /* only the Q4_0 product reads the paired copy, and only in the vector builds */
#if defined(__AVX2__)
    for (int i = 0; i < job.n_parts; i++) pairs |= job.parts[i].qtype == GG_Q4_0;
#endif
    const size_t width = x_dtype == DT_BF16 ? 2 : 4;
    for (long t = 0; t < m; t++) {
        gg_quantize_row((const char*)x + (size_t)t * k * width, x_dtype, k, xq + t * k,
                        xs + t * groups, gsum + t * groups, gsum16 + t * 2 * groups);
        if (pairs) gg_pair_blocks(xq + t * k, k, paired + t * k);
    }
    job.xq8p = pairs ? paired : xq; /* not read without a Q4_0 part */
    job.xq8 = xq;
    job.gscale = xs;
    job.gsum = gsum;
    job.gsum16 = gsum16;
    return 0;
}

#if defined(__AVX2__)
/* Sums of four adjacent products u8 * s8 as int32 (no product pair here reaches maddubs's 16-bit
 * saturation: |u| <= 128, |s| <= 127). With AVX-512 VNNI one vpdpbusd. */
static inline __m256i gg_dot4(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* Q4_0's eight blocks g .. g + 7 against R rows of x in pairs (gg_pair_blocks), added to acc[t].
 * Two blocks' nibbles are loaded side by side: one mask gives both blocks' inputs 0-15, one shift
 * and mask their 16-31; the two products meet in 16 bits (|q x| pairs <= 2 * 15 * 127) and one
 * madd sums them, so a block costs ~10 instructions where one at a time cost ~13; the sums come
 * out as blocks 0 2 4 6 1 3 5 7, and the scales are taken in that order. */
static inline __attribute__((always_inline)) void gg_span_q4_0(const uint8_t* row, long g, long k,
                                                               const int8_t* xqp, const float* xsc,
                                                               const int32_t* xsum, int R,
                                                               __m256* acc) {
    const long groups = k / GG_GROUP;
    const __m256i m15 = _mm256_set1_epi8(15);
    const uint8_t* p = row + 18 * g;
    __m256i L[4], H[4];
    for (int j = 0; j < 4; j++) {
        const __m256i v = _mm256_loadu2_m128i((const __m128i*)(p + 18 * (2 * j + 1) + 2),
                                              (const __m128i*)(p + 18 * (2 * j) + 2));
        L[j] = _mm256_and_si256(v, m15);
        H[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
    }
    const __m256 ws = _mm256_cvtph_ps(
        _mm_set_epi64x((long long)gg_d4(p + 18, 36), (long long)gg_d4(p, 36)));
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int t = 0; t < R; t++) {
        const int8_t* x = xqp + t * k + 32 * g;
        __m256i sums[4];
        for (int j = 0; j < 4; j++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i*)(x + 64 * j));
            const __m256i x1 = _mm256_loadu_si256((const __m256i*)(x + 64 * j + 32));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
            sums[j] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), L[j], x0),
                                          H[j], x1);
#else
            sums[j] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(L[j], x0),
                                                         _mm256_maddubs_epi16(H[j], x1)),
                                        _mm256_set1_epi16(1));
#endif
        }
        __m256i dots = _mm256_hadd_epi32(_mm256_hadd_epi32(sums[0], sums[1]),
                                         _mm256_hadd_epi32(sums[2], sums[3]));
        /* sum (q - 8) x = sum q x - 8 sum x, exact in int32 */
        const __m256i gsum = _mm256_permutevar8x32_epi32(
            _mm256_loadu_si256((const __m256i*)(xsum + t * groups + g)), order);
        dots = _mm256_sub_epi32(dots, _mm256_slli_epi32(gsum, 3));
        const __m256 x8 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xsc + t * groups + g), order);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(ws, x8), acc[t]);
    }
}

/* Eight groups (256 weights) g .. g + 7 of one weight row against `R` rows of x, added to acc[t]
 * (and Q4_K's mins to accm[t]). Each group's 32 weights are unpacked once into bytes U (unsigned:
 * Q4_0/Q4_K nibbles; Q8_0/Q6_K |w|, with the sign moved onto x from S), then dotted with every row:
 * one maddubs + madd (or vpdpbusd) per 32 weights and row. */
static inline __attribute__((always_inline)) void gg_span(int qtype, const uint8_t* row, long g,
                                                          long k, const int8_t* xq,
                                                          const float* xsc, const int32_t* xsum,
                                                          const int16_t* xsum16, int R,
                                                          __m256* acc, __m256* accm) {
    const long groups = k / GG_GROUP;
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256i U[8], S[8], SC[8], sc16 = _mm256_setzero_si256();
    __m256 ws, wm = _mm256_setzero_ps();
    if (qtype == GG_Q4_0) {
        const uint8_t* p = row + 18 * g;
        for (int i = 0; i < 8; i++) {
            __m128i v = _mm_loadu_si128((const __m128i*)(p + 18 * i + 2));
            U[i] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), m15);
        }
        ws = gg_d8(p, 18);
    } else if (qtype == GG_Q8_0) {
        const uint8_t* p = row + 34 * g;
        for (int i = 0; i < 8; i++) {
            S[i] = _mm256_loadu_si256((const __m256i*)(p + 34 * i + 2));
            U[i] = _mm256_sign_epi8(S[i], S[i]);
        }
        ws = gg_d8(p, 34);
    } else if (qtype == GG_Q4_K) {
        const uint8_t* p = row + 144 * (g / 8);
        for (int i = 0; i < 4; i++) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(p + 16 + 32 * i));
            U[2 * i] = _mm256_and_si256(v, m15);
            U[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
        }
        /* the eight six-bit scales and mins as bytes (q4k_scale_min, four at a time) */
        uint32_t s0, s1, s2;
        memcpy(&s0, p + 4, 4);
        memcpy(&s1, p + 8, 4);
        memcpy(&s2, p + 12, 4);
        const uint32_t sc_lo = s0 & 0x3f3f3f3fu, m_lo = s1 & 0x3f3f3f3fu;
        const uint32_t sc_hi = (s2 & 0x0f0f0f0fu) | ((s0 >> 2) & 0x30303030u);
        const uint32_t m_hi = ((s2 >> 4) & 0x0f0f0f0fu) | ((s1 >> 2) & 0x30303030u);
        __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32((int)sc_lo, (int)sc_hi, 0, 0)));
        __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32((int)m_lo, (int)m_hi, 0, 0)));
        ws = _mm256_mul_ps(_mm256_set1_ps(gg_half(p)), sc);
        wm = _mm256_mul_ps(_mm256_set1_ps(gg_half(p + 2)), m);
    } else { /* Q6_K: w = d * sc[sub-block of 16] * (q - 32); q unsigned (0..63) into maddubs, the
              * 32 taken off afterwards as 32 * sum_j sc_j * (sum of x over sub-block j) */
        const uint8_t* p = row + 210 * (g / 8);
        const __m256i m48 = _mm256_set1_epi8(48);
        for (int h = 0; h < 2; h++) {
            __m256i la = _mm256_loadu_si256((const __m256i*)(p + 64 * h));
            __m256i lb = _mm256_loadu_si256((const __m256i*)(p + 64 * h + 32));
            __m256i hv = _mm256_loadu_si256((const __m256i*)(p + 128 + 32 * h));
            /* positions 128h + 0..31, +32, +64, +96: groups 4h .. 4h + 3 */
            U[4 * h] = _mm256_or_si256(_mm256_and_si256(la, m15),
                                       _mm256_and_si256(_mm256_slli_epi16(hv, 4), m48));
            U[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(lb, m15),
                                           _mm256_and_si256(_mm256_slli_epi16(hv, 2), m48));
            U[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(la, 4), m15),
                                           _mm256_and_si256(hv, m48));
            U[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lb, 4), m15),
                                           _mm256_and_si256(_mm256_srli_epi16(hv, 2), m48));
        }
        /* the 16 int8 scales as int16; SC[i]: scale 2i in the low 128 bits, 2i + 1 in the high */
        sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 192)));
        const __m256i first8 = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        const __m256i last8 = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        for (int i = 0; i < 8; i++) {
            const char lo = (char)(4 * i % 16), hi = (char)((4 * i + 2) % 16);
            const __m256i pick = _mm256_setr_epi8(
                lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1,
                lo, lo + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1,
                hi, hi + 1, hi, hi + 1);
            SC[i] = _mm256_shuffle_epi8(i < 4 ? first8 : last8, pick);
        }
        ws = _mm256_set1_ps(gg_half(p + 208));
    }
    for (int t = 0; t < R; t++) {
        const int8_t* x = xq + t * k + 32 * g;
        const float* xs = xsc + t * groups + g;
        const int32_t* gsum = xsum + t * groups + g;
        __m256i a[8];
        for (int i = 0; i < 8; i++) {
            __m256i xi = _mm256_loadu_si256((const __m256i*)(x + 32 * i));
            if (qtype == GG_Q4_0 || qtype == GG_Q4_K)
                a[i] = gg_dot4(U[i], xi);
            else if (qtype == GG_Q8_0)
                a[i] = gg_dot4(U[i], _mm256_sign_epi8(xi, S[i]));
            else /* |q x| pairs <= 2 * 63 * 127: no saturation */
                a[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(U[i], xi), SC[i]);
        }
        __m256i dots = gg_isum8(a);
        if (qtype == GG_Q6_K) { /* lane i: sc_2i x-sum_2i + sc_2i+1 x-sum_2i+1, times 32 */
            const __m256i sums = _mm256_loadu_si256((const __m256i*)(xsum16 + t * 2 * groups + 2 * g));
            dots = _mm256_sub_epi32(dots, _mm256_slli_epi32(_mm256_madd_epi16(sc16, sums), 5));
        }
        if (qtype == GG_Q4_0) /* sum (q - 8) x = sum q x - 8 sum x, exact in int32 */
            dots = _mm256_sub_epi32(dots, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)gsum), 3));
        const __m256 x8 = _mm256_loadu_ps(xs);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(ws, x8), acc[t]);
        if (qtype == GG_Q4_K) {
            __m256 xsum = _mm256_mul_ps(x8, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)gsum)));
            accm[t] = _mm256_fmadd_ps(wm, xsum, accm[t]);
        }
    }
}

static inline __attribute__((always_inline)) long gg_spans(int qtype, const uint8_t* row, long k,
                                                           const int8_t* xq, const int8_t* xqp,
                                                           const float* xsc, const int32_t* xsum,
                                                           const int16_t* xsum16, int R,
                                                           float* out) {
    const long groups = k / GG_GROUP;
    __m256 acc[GG_ROWS], accm[GG_ROWS];
    for (int t = 0; t < R; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    long g = 0;
    const long span = qtype == GG_Q8_0 ? 272 : qtype == GG_Q6_K ? 210 : 144; /* bytes per 256 */
    for (; g + 8 <= groups; g += 8) {
        const char* ahead = (const char*)row + (g / 8) * span + GG_AHEAD;
        for (long o = 0; o < span; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
        if (qtype == GG_Q4_0)
            gg_span_q4_0(row, g, k, xqp, xsc, xsum, R, acc);
        else
            gg_span(qtype, row, g, k, xq, xsc, xsum, xsum16, R, acc, accm);
    }
    for (int t = 0; t < R; t++) out[t] = gg_hsum(_mm256_sub_ps(acc[t], accm[t]));
    return g;
}
#endif

/* Groups g.. of one weight row that the vector code did not take (or every group, in the plain
 * build), added to out[t] for R rows of x: the same integers, each group's scale applied on its
 * own. */
static void gg_dot_tail(int qtype, const uint8_t* row, long k, long g, const int8_t* xq,
                        const float* xsc, const int32_t* xsum, int R, float* out) {
    const long groups = k / GG_GROUP;
    for (; g < groups; g++) {
        int8_t q[32];
        float scale[2], min;
        gg_group(qtype, row, g, q, scale, &min);
        for (int t = 0; t < R; t++) {
            const int8_t* x = xq + t * k + 32 * g;
            int32_t s0 = 0, s1 = 0;
            for (int i = 0; i < 16; i++) {
                s0 += (int32_t)q[i] * x[i];
                s1 += (int32_t)q[i + 16] * x[i + 16];
            }
            const long at = t * groups + g;
            out[t] += xsc[at] * ((float)s0 * scale[0] + (float)s1 * scale[1] - min * (float)xsum[at]);
        }
    }
}

/* out[t] = sum_i w_i x_i over one weight row (blocks of `qtype`, k inputs) for x rows t0 .. t0 + R
 * - 1 (R <= GG_ROWS) of job.xq8 / gscale / gsum. */
static void gg_dot_rows(int qtype, const uint8_t* row, long k, long t0, int R, float* out) {
    const long groups = k / GG_GROUP;
    const int8_t* xq = job.xq8 + t0 * k;
    const float* xsc = job.gscale + t0 * groups;
    const int32_t* xsum = job.gsum + t0 * groups;
    long g = 0;
#if defined(__AVX2__)
    const int16_t* xsum16 = job.gsum16 + t0 * 2 * groups;
    const int8_t* xqp = job.xq8p + t0 * k;
    /* a copy of the code per type (constant qtype: the other types' branches and registers go),
     * and for one row (a decode step) one with nothing kept in memory per row */
#define GG_SPANS(type)                                                                 \
    (R == 1 ? gg_spans(type, row, k, xq, xqp, xsc, xsum, xsum16, 1, out)               \
            : gg_spans(type, row, k, xq, xqp, xsc, xsum, xsum16, R, out))
    switch (qtype) {
        case GG_Q4_0: g = GG_SPANS(GG_Q4_0); break;
        case GG_Q8_0: g = GG_SPANS(GG_Q8_0); break;
        case GG_Q4_K: g = GG_SPANS(GG_Q4_K); break;
        default: g = GG_SPANS(GG_Q6_K); break;
    }
#undef GG_SPANS
#else
    for (int t = 0; t < R; t++) out[t] = 0.0f;
#endif
    gg_dot_tail(qtype, row, k, g, xq, xsc, xsum, R, out);
}

#if defined(__AVX2__)
/* The 4-bit products for many rows of x (a prefill chunk, a verify pass) go through tiles of 8
 * weight rows with the rows in the lanes: each group's 32 nibbles of the 8 rows are unpacked and
 * transposed once (vector j holds inputs 4j .. 4j + 3 of every row), then every row of x meets
 * them with 8 broadcasts, 8 maddubs added in 16 bits (|q x| pairs <= 2 * 15 * 127, eight of them
 * <= 30480) and one madd: ~30 instructions per 256 multiply-adds where a row at a time against 8
 * rows of x took ~42, and no horizontal sums. Each lane accumulates a group's products in the lane
 * order of the one-row product and adds them up in its order, so every output is bit for bit what
 * the one-row product gives (a test holds it to that). */

typedef struct {
    __m256i v[8];  /* v[j]: inputs 4j .. 4j + 3 of rows 0 .. 7, 4 bytes per row */
    __m256 d;      /* each row's scale of this group (Q4_0: d; Q4_K: d * sc) */
    __m256 mn;     /* Q4_K: each row's min of this group (dmin * m) */
} GGTileGroup;

static _Thread_local GGTileGroup* tile_mem;
static _Thread_local long tile_groups;

/* Transpose 8 rows of 8 dwords: out[j] dword r = rows[r] dword j. */
static inline void gg_transpose8(const __m256i* rows, __m256i* out) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(rows[i], rows[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(rows[i], rows[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    /* b[0..3]: dwords 0, 1, 2, 3 (and 4-7 in the high halves) of rows 0-3; b[4..7]: rows 4-7 */
    for (int i = 0; i < 4; i++) {
        out[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        out[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

/* Groups 0 .. groups - 1 of rows r .. r + 7 of a Q4_0 or Q4_K part, unpacked into tile. */
static void gg_tile_unpack(const Part* part, long r, long groups, GGTileGroup* tile) {
    const __m256i m15 = _mm256_set1_epi8(15);
    for (long g = 0; g < groups; g++) {
        __m256i rows[8];
        float d[8], mn[8];
        for (int i = 0; i < 8; i++) {
            const uint8_t* row = part->w4 + (r + i) * part->row_bytes;
            if (part->qtype == GG_Q4_0) {
                const uint8_t* p = row + 18 * g;
                const __m128i v = _mm_loadu_si128((const __m128i*)(p + 2));
                rows[i] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), m15);
                d[i] = gg_half(p);
                mn[i] = 0.0f;
            } else {
                const uint8_t* p = row + 144 * (g / 8);
                const int j = (int)(g % 8);
                const __m256i v = _mm256_loadu_si256((const __m256i*)(p + 16 + 32 * (j / 2)));
                rows[i] = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(v, 4) : v, m15);
                int sc, m;
                q4k_scale_min(p + 4, j, &sc, &m);
                d[i] = gg_half(p) * (float)sc;
                mn[i] = gg_half(p + 2) * (float)m;
            }
        }
        gg_transpose8(rows, tile[g].v);
        tile[g].d = _mm256_loadu_ps(d);
        tile[g].mn = _mm256_loadu_ps(mn);
    }
}

/* Rows r .. r + 7 of a Q4_0 or Q4_K part against every row of x; 0, or -2 without memory for
 * the tile (the caller then takes the rows one at a time). */
static int gg_tile_rows(const Part* part, long r) {
    const long k = job.k, groups = k / GG_GROUP, spans = groups / 8, m = job.m, n = part->n;
    const int k_quant = part->qtype == GG_Q4_K;
    if (spans * 8 > tile_groups) {
        GGTileGroup* grown = aligned_alloc(32, (size_t)spans * 8 * sizeof(GGTileGroup));
        if (!grown) return -2;
        free(tile_mem);
        tile_mem = grown;
        tile_groups = spans * 8;
    }
    GGTileGroup* tile = tile_mem;
    gg_tile_unpack(part, r, spans * 8, tile);
    /* lane i of the one-row product's span holds group 8s + order[i] (gg_span_q4_0's pairs) */
    static const int pair_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (long t = 0; t < m; t++) {
        const int8_t* x = job.xq8 + t * k;
        const float* xs = job.gscale + t * groups;
        const int32_t* gsum = job.gsum + t * groups;
        __m256 acc[8], accm[8];
        for (int i = 0; i < 8; i++) acc[i] = accm[i] = _mm256_setzero_ps();
        for (long s = 0; s < spans; s++) {
            for (int i = 0; i < 8; i++) {
                const long g = 8 * s + (k_quant ? i : pair_order[i]);
                const GGTileGroup* tg = tile + g;
                const int8_t* xg = x + 32 * g;
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
                __m256i dot = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) {
                    int32_t four;
                    memcpy(&four, xg + 4 * j, 4);
                    dot = _mm256_dpbusd_epi32(dot, tg->v[j], _mm256_set1_epi32(four));
                }
#else
                __m256i pairs = _mm256_setzero_si256();
                for (int j = 0; j < 8; j++) {
                    int32_t four;
                    memcpy(&four, xg + 4 * j, 4);
                    pairs = _mm256_add_epi16(pairs,
                                             _mm256_maddubs_epi16(tg->v[j], _mm256_set1_epi32(four)));
                }
                __m256i dot = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
                const __m256 xsb = _mm256_set1_ps(xs[g]);
                if (!k_quant) dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(gsum[g] << 3));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(tg->d, xsb), acc[i]);
                if (k_quant)
                    accm[i] = _mm256_fmadd_ps(tg->mn, _mm256_set1_ps(xs[g] * (float)gsum[g]), accm[i]);
            }
        }
        __m256 l[8];
        for (int i = 0; i < 8; i++) l[i] = k_quant ? _mm256_sub_ps(acc[i], accm[i]) : acc[i];
        /* gg_hsum's order: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) */
        const __m256 total = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6])),
            _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7])));
        float out[8];
        _mm256_storeu_ps(out, total);
        for (int i = 0; i < 8; i++) {
            if (spans * 8 < groups)
                gg_dot_tail(part->qtype, part->w4 + (r + i) * part->row_bytes, k, spans * 8, x, xs,
                            gsum, 1, &out[i]);
            store_to(part->y, t * n + r + i, out[i]);
        }
    }
    return 0;
}
#endif

/* Rows r0 .. r1 - 1 of a part against every row of x: y [m][n], GG_ROWS rows of x per pass over
 * a weight row, which then comes from memory once and from the cache for the other rows (4-bit
 * weights and many rows of x: tiles of 8 weight rows, gg_tile_rows). */
static void gguf_rows(const Part* part, long r0, long r1) {
    const long m = job.m, n = part->n;
    float out[GG_ROWS];
#if defined(__AVX2__)
    if (m >= GG_TILE_MIN && (part->qtype == GG_Q4_0 || part->qtype == GG_Q4_K))
        for (; r0 + 8 <= r1; r0 += 8)
            if (gg_tile_rows(part, r0)) break;
#endif
    for (long r = r0; r < r1; r++) {
        const uint8_t* row = part->w4 + r * part->row_bytes;
        for (long t0 = 0; t0 < m; t0 += GG_ROWS) {
            const int R = (int)(m - t0 < GG_ROWS ? m - t0 : GG_ROWS);
            gg_dot_rows(part->qtype, row, job.k, t0, R, out);
            for (int t = 0; t < R; t++) store_to(part->y, (t0 + t) * n + r, out[t]);
        }
    }
}

/* Rows row0 + GG_TILE * t .. (at most GG_TILE) written out transposed into y [k][y_cols], a group
 * of 32 inputs at a time: 16 rows' values of one input column are consecutive in y. */
static void gguf_weights_tile(long t) {
    const Part* part = &job.parts[0];
    const long n = job.y_cols, c0 = t * GG_TILE;
    const int rows = (int)(n - c0 < GG_TILE ? n - c0 : GG_TILE);
    const int k_quant = part->qtype == GG_Q4_K;
    float w[GG_GROUP][GG_TILE];
#if defined(__AVX2__)
    float by_row[GG_TILE][GG_GROUP];
#endif
    for (long g = 0; g < job.k / GG_GROUP; g++) {
        for (int i = 0; i < rows; i++) {
            int8_t q[32];
            float scale[2], min;
            gg_group(part->qtype, part->w4 + (job.row0 + c0 + i) * part->row_bytes, g, q, scale,
                     &min);
#if defined(__AVX2__)
            /* the same products (and Q4_K's difference), eight at a time, row by row */
            for (int c = 0; c < 4; c++) {
                __m256 v = _mm256_cvtepi32_ps(
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + 8 * c))));
                v = _mm256_mul_ps(_mm256_set1_ps(scale[c / 2]), v);
                if (k_quant) v = _mm256_sub_ps(v, _mm256_set1_ps(min));
                _mm256_storeu_ps(&by_row[i][8 * c], v);
            }
#else
            if (k_quant) {
                for (int j = 0; j < 32; j++) w[j][i] = scale[0] * (float)q[j] - min;
            } else {
                for (int j = 0; j < 32; j++) w[j][i] = scale[j / 16] * (float)q[j];
            }
#endif
        }
#if defined(__AVX2__)
        if (rows == GG_TILE) { /* 8x8 transposes */
            for (int ib = 0; ib < GG_TILE; ib += 8) {
                for (int jb = 0; jb < GG_GROUP; jb += 8) {
                    __m256 r[8], u[8], v[8];
                    for (int a = 0; a < 8; a++) r[a] = _mm256_loadu_ps(&by_row[ib + a][jb]);
                    for (int a = 0; a < 8; a += 2) {
                        u[a] = _mm256_unpacklo_ps(r[a], r[a + 1]);
                        u[a + 1] = _mm256_unpackhi_ps(r[a], r[a + 1]);
                    }
                    for (int a = 0; a < 8; a += 4) {
                        v[a] = _mm256_shuffle_ps(u[a], u[a + 2], 0x44);
                        v[a + 1] = _mm256_shuffle_ps(u[a], u[a + 2], 0xee);
                        v[a + 2] = _mm256_shuffle_ps(u[a + 1], u[a + 3], 0x44);
                        v[a + 3] = _mm256_shuffle_ps(u[a + 1], u[a + 3], 0xee);
                    }
                    /* v[0..3]: columns 0-3 (rows ib..ib+3 | 4-7 in the high halves of 0,1,2,3
                     * for columns 4-7); v[4..7]: the same for rows ib+4..ib+7 */
                    for (int a = 0; a < 4; a++) {
                        _mm256_storeu_ps(&w[jb + a][ib], _mm256_permute2f128_ps(v[a], v[a + 4], 0x20));
                        _mm256_storeu_ps(&w[jb + a + 4][ib], _mm256_permute2f128_ps(v[a], v[a + 4], 0x31));
                    }
                }
            }
        } else {
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < GG_GROUP; j++) w[j][i] = by_row[i][j];
        }
#endif
        for (int j = 0; j < GG_GROUP; j++) {
            const long at = (g * GG_GROUP + j) * n + c0;
            if (job.y_dtype == DT_BF16) {
                uint16_t* out = (uint16_t*)job.y + at;
                for (int i = 0; i < rows; i++) out[i] = f32_to_bf16(w[j][i]);
            } else {
                memcpy((float*)job.y + at, w[j], sizeof(float) * (size_t)rows);
            }
        }
    }
}

/* Whether `count` GGUF weights of these types take k inputs with rows of these lengths. */
static int gg_shapes_ok(int count, const int* qtypes, const long* row_bytes, const long* rows,
                        long k) {
    if (count < 1 || count > MAX_PARTS || k <= 0) return 0;
    for (int i = 0; i < count; i++) {
        long weights, bytes;
        if (gg_block(qtypes[i], &weights, &bytes) || k % weights ||
            row_bytes[i] != k / weights * bytes || rows[i] <= 0)
            return 0;
    }
    return 1;
}

/* y_i = x W_i^T for `count` GGUF weights that read the same x (q, k, v; gate, up) as one job: x is
 * rounded once and one hand-out of rows covers them all. W_i is rows[i] rows of row_bytes[i]
 * bytes of qtypes[i] blocks (Q8_0, Q4_0, Q4_K, Q6_K), k inputs each; x [m][k] and y_i [m][rows[i]]
 * bfloat16 or float32 (m = 1: a decode step; more: a prefill chunk or a verify pass). */
/* The product as one job of the pool. Caller holds call_lock and has checked the arguments. */
static int gg_product(int count, const int* qtypes, const uint8_t* const* w, const long* row_bytes,
                      void* const* y, const long* rows, const void* x, int x_dtype, int y_dtype,
                      long m, long k, int threads) {
    Job request = {.kind = KIND_GGUF, .group = GG_GROUP, .y_dtype = y_dtype, .k = k, .m = m,
                   .n_parts = count};
    for (int i = 0; i < count; i++) {
        request.parts[i] = (Part){.w4 = w[i], .qtype = qtypes[i], .row_bytes = row_bytes[i],
                                  .y = y[i], .n = rows[i], .first = request.units};
        request.units += rows[i];
        request.n += rows[i];
    }
    job = request;
    int rc = gg_quantize_x(x, x_dtype, m, k);
    if (rc == 0) run_job(threads);
    return rc;
}

int lc_gguf_matvec_many(int count, const int* qtypes, const uint8_t* const* w,
                        const long* row_bytes, void* const* y, const long* rows, const void* x,
                        int x_dtype, int y_dtype, long m, long k, int threads) {
    if (!gg_shapes_ok(count, qtypes, row_bytes, rows, k) || m < 1 || m >= (1L << 31) ||
        threads < 1 || !dtypes_ok(x_dtype, y_dtype))
        return -1;
    long total = 0;
    for (int i = 0; i < count; i++) total += rows[i];
    if (total >= (1L << 31)) return -1;
    pthread_mutex_lock(&call_lock);
    int rc = gg_product(count, qtypes, w, row_bytes, y, rows, x, x_dtype, y_dtype, m, k, threads);
    pthread_mutex_unlock(&call_lock);
    return rc;
}

/* The same for one weight: y [m][rows] = x W^T. */
int lc_gguf_matvec(int qtype, const uint8_t* w, long row_bytes, const void* x, int x_dtype,
                   void* y, int y_dtype, long m, long rows, long cols, int threads) {
    return lc_gguf_matvec_many(1, &qtype, &w, &row_bytes, &y, &rows, x, x_dtype, y_dtype, m, cols,
                               threads);
}

/* Rows first .. first + n of a GGUF weight (rows x cols, blocks of qtype) written out transposed
 * as y [cols][n], bfloat16 or float32, each value exactly gguf-py's dequantized float32 (rounded
 * once to bfloat16): the prefill path's GEMM operand. */
int lc_gguf_weights(int qtype, const uint8_t* w, long row_bytes, void* y, int y_dtype, long rows,
                    long cols, long first, long n, int threads) {
    if (!gg_shapes_ok(1, &qtype, &row_bytes, &rows, cols) || threads < 1 ||
        !dtypes_ok(DT_F32, y_dtype) || first < 0 || n <= 0 || first + n > rows ||
        rows >= (1L << 31))
        return -1;
    pthread_mutex_lock(&call_lock);
    job = (Job){.kind = KIND_GGUF_WEIGHTS, .y = y, .y_dtype = y_dtype, .k = cols, .n = rows,
                .row0 = first, .y_cols = n, .units = (n + GG_TILE - 1) / GG_TILE, .n_parts = 1};
    job.parts[0] = (Part){.w4 = w, .qtype = qtype, .row_bytes = row_bytes, .n = rows};
    run_job(threads);
    pthread_mutex_unlock(&call_lock);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * A whole transformer block of a decode step (one token) on GGUF weights, in one call.
 *
 * Why: with the products on the kernels above, a TinyLlama-shaped Q4_0 step still spent ~8 of its
 * ~37 ms (AMD EPYC, 2 threads) between them: loop attention as ~15 torch ops per layer on a single
 * query (4.5 ms at context 16, 11.5 at 512), and the norms, SwiGLU, residual adds and Python
 * around them; each of those ops runs cold, right after a product streamed megabytes through the
 * caches, and each product call paid Python's and the pool's start. Here the block runs as one call
 * per layer: the products, then attention as the same loop (engine/model/attention.py: the cache
 * walked in blocks of `block` positions, a running maximum and the two running totals per query
 * head, one division at the end), on the pool, one key/value head per unit of work.
 * It computes what engine/model/transformer.py's TransformerBlock computes with the compiled norms,
 * rotary and products, in the same order, rounded to the activation dtype at the same points; the
 * float32 sums inside attention and the exponentials (a polynomial, within ~2 ulp of expf) are the
 * only differences, at rounding level. */

enum { W_Q, W_K, W_V, W_O, W_GATE, W_UP, W_DOWN, W_COUNT };

typedef struct {
    const uint8_t* w[W_COUNT];  /* each weight's blocks [rows][row_bytes] */
    long row_bytes[W_COUNT];
    int qtype[W_COUNT];
    int dtype;                  /* activations, KV cache and norm gains: DT_BF16 or DT_F32 */
    const void* attn_norm;      /* [dim] */
    const void* ffn_norm;       /* [dim] */
    void* k_cache;              /* [n_kv_heads][cache_len][head_dim] */
    void* v_cache;
    const float* cos_table;     /* [cache_len][head_dim / 2] */
    const float* sin_table;
    long dim, hidden, n_heads, n_kv_heads, head_dim, cache_len, block;
    float eps;
    int interleaved;            /* rotary pairs (2i, 2i + 1), else (i, i + head_dim / 2) */
    long long* spent;           /* NULL, or nanoseconds added: [0] products, [1] attention (rotary,
                                 * cache, the loop), [2] the rest (norms, SwiGLU, residuals) */
} LcBlock;

static struct {
    const LcBlock* b;
    const void* q;       /* [n_heads][head_dim], dtype, rotated */
    void* out;           /* [n_heads][head_dim], dtype */
    long pos;            /* the query's position: keys 0 .. pos are read */
    long block;          /* positions per loop iteration */
    float* scratch;      /* unit_floats per key/value head */
    long unit_floats;
} attn;

static void* step_buf;
static size_t step_bytes;

#if defined(__AVX2__)
/* e^x for 8 floats (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for e^r,
 * times 2^n built in the exponent bits); 0 below -87.3, infinity above 88.7, NaN stays NaN. */
static inline __m256 lc_exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3365478515625f), hi = _mm256_set1_ps(88.72283935546875f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* the second operand returns if x is NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
}
#endif

/* e^x of n floats in place. */
static void lc_exp_n(float* v, long n) {
    long i = 0;
#if defined(__AVX2__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, lc_exp8(_mm256_loadu_ps(v + i)));
#endif
    for (; i < n; i++) v[i] = expf(v[i]);
}

/* q . k over d values: q float32, k in dtype. */
static inline float lc_dot(const float* q, const void* k, int dtype, long d) {
    long i = 0;
    float total = 0.0f;
#if defined(__AVX2__)
    __m256 s = _mm256_setzero_ps();
    for (; i + 8 <= d; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), gg_x8(k, dtype, i), s);
    total = gg_hsum(s);
#endif
    for (; i < d; i++) total += q[i] * load_at(k, dtype, i);
    return total;
}

/* acc[i] += w * v[i] over d values, v in dtype. */
static inline void lc_axpy(float* acc, float w, const void* v, int dtype, long d) {
    long i = 0;
#if defined(__AVX2__)
    const __m256 w8 = _mm256_set1_ps(w);
    for (; i + 8 <= d; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(w8, gg_x8(v, dtype, i), _mm256_loadu_ps(acc + i)));
#endif
    for (; i < d; i++) acc[i] += w * load_at(v, dtype, i);
}

/* Loop attention of the query heads that share key/value head g (engine/model/attention.py). */
static void attend_kv_head(long g) {
    const LcBlock* b = attn.b;
    const long d = b->head_dim, rep = b->n_heads / b->n_kv_heads, B = attn.block;
    const int dt = b->dtype;
    const size_t es = dt == DT_BF16 ? 2 : 4;
    float* qs = attn.scratch + g * attn.unit_floats; /* [rep][d] */
    float* acc = qs + rep * d;                        /* [rep][d] */
    float* running_max = acc + rep * d;               /* [rep] */
    float* total = running_max + rep;                 /* [rep] */
    float* scores = total + rep;                      /* [rep][B] */
    const float scale = 1.0f / sqrtf((float)d);
    for (long r = 0; r < rep; r++) {
        for (long i = 0; i < d; i++) {
            qs[r * d + i] = load_at(attn.q, dt, (g * rep + r) * d + i) * scale;
            acc[r * d + i] = 0.0f;
        }
        total[r] = 0.0f;
    }
    const char* keys = (const char*)b->k_cache + (size_t)g * b->cache_len * d * es;
    const char* values = (const char*)b->v_cache + (size_t)g * b->cache_len * d * es;
    for (long b0 = 0; b0 <= attn.pos; b0 += B) {
        const long nb = attn.pos + 1 - b0 < B ? attn.pos + 1 - b0 : B;
        /* score every position of the block against every query head: q . k / sqrt(d) */
        for (long t = 0; t < nb; t++) {
            const void* k = keys + (size_t)(b0 + t) * d * es;
            for (long r = 0; r < rep; r++) scores[r * B + t] = lc_dot(qs + r * d, k, dt, d);
        }
        /* online softmax: rescale what is there to the new maximum, then add this block */
        for (long r = 0; r < rep; r++) {
            float* s = scores + r * B;
            float block_max = s[0];
            for (long t = 1; t < nb; t++) block_max = s[t] > block_max ? s[t] : block_max;
            const float new_max = b0 == 0 || block_max > running_max[r] ? block_max : running_max[r];
            if (b0 > 0) {
                const float rescale = expf(running_max[r] - new_max);
                total[r] *= rescale;
                for (long i = 0; i < d; i++) acc[r * d + i] *= rescale;
            }
            for (long t = 0; t < nb; t++) s[t] -= new_max;
            lc_exp_n(s, nb);
            float block_total = 0.0f;
            for (long t = 0; t < nb; t++) block_total += s[t];
            total[r] += block_total;
            running_max[r] = new_max;
        }
        for (long t = 0; t < nb; t++) {
            const void* v = values + (size_t)(b0 + t) * d * es;
            for (long r = 0; r < rep; r++) lc_axpy(acc + r * d, scores[r * B + t], v, dt, d);
        }
    }
    for (long r = 0; r < rep; r++)
        for (long i = 0; i < d; i++)
            store_at(attn.out, dt, (g * rep + r) * d + i, acc[r * d + i] / total[r]);
}

/* y = silu(gate) * up, each rounded to dtype as torch rounds F.silu's and the product's results. */
static void lc_swiglu(const void* gate, const void* up, void* y, int dtype, long n) {
    float tmp[8];
    long i = 0;
#if defined(__AVX2__)
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = gg_x8(gate, dtype, i);
        const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, lc_exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(tmp, s);
        for (int j = 0; j < 8; j++) store_at(y, dtype, i + j, round_to(dtype, tmp[j]) * load_at(up, dtype, i + j));
    }
#endif
    for (; i < n; i++) {
        const float g = load_at(gate, dtype, i);
        store_at(y, dtype, i, round_to(dtype, g / (1.0f + expf(-g))) * load_at(up, dtype, i));
    }
    (void)tmp;
}

/* h[i] += a[i] (dtype): a residual add. */
static void lc_add(void* h, const void* a, int dtype, long n) {
    for (long i = 0; i < n; i++) store_at(h, dtype, i, load_at(h, dtype, i) + load_at(a, dtype, i));
}

/* h [dim] (dtype) through one transformer block at position pos, in place: the token's key and
 * value go into the cache at pos, attention reads positions 0 .. pos. Returns 0, -1 for arguments
 * it cannot take, -2 when out of memory. */
int lc_gguf_decode_block(const LcBlock* b, void* h, long pos, int threads) {
    const int dt = b->dtype;
    if ((dt != DT_BF16 && dt != DT_F32) || threads < 1 || b->dim <= 0 || b->hidden <= 0 ||
        b->n_heads <= 0 || b->n_kv_heads <= 0 || b->n_heads % b->n_kv_heads || b->head_dim <= 0 ||
        b->head_dim % 2 || b->block < 1 || pos < 0 || pos >= b->cache_len)
        return -1;
    const long d = b->head_dim, qdim = b->n_heads * d, kvdim = b->n_kv_heads * d;
    const long in_of[W_COUNT] = {b->dim, b->dim, b->dim, qdim, b->dim, b->dim, b->hidden};
    const long out_of[W_COUNT] = {qdim, kvdim, kvdim, b->dim, b->hidden, b->hidden, b->dim};
    for (int i = 0; i < W_COUNT; i++)
        if (!gg_shapes_ok(1, &b->qtype[i], &b->row_bytes[i], &out_of[i], in_of[i])) return -1;
    const long block = b->block < pos + 1 ? b->block : pos + 1;
    const long rep = b->n_heads / b->n_kv_heads;
    const long unit_floats = 2 * rep * d + 2 * rep + rep * block + 16; /* attend_kv_head's */
    const long act = 2 * b->dim + qdim + 2 * kvdim + qdim + 3 * b->hidden; /* activations */
    const size_t need = (size_t)act * 4 + (size_t)(b->n_kv_heads * unit_floats) * 4 + 64;
    pthread_mutex_lock(&call_lock);
    if (need > step_bytes) {
        void* grown = realloc(step_buf, need);
        if (!grown) {
            pthread_mutex_unlock(&call_lock);
            return -2;
        }
        step_buf = grown;
        step_bytes = need;
    }
    const size_t es = dt == DT_BF16 ? 2 : 4;
    char* p = (char*)step_buf;
    void* xn = p;                   p += b->dim * es;
    void* q = p;                    p += qdim * es;
    void* k = p;                    p += kvdim * es;
    void* v = p;                    p += kvdim * es;
    void* att = p;                  p += qdim * es;
    void* o = p;                    p += b->dim * es;
    void* gate = p;                 p += b->hidden * es;
    void* up = p;                   p += b->hidden * es;
    void* a = p;                    p += b->hidden * es;
    float* scratch = (float*)(((uintptr_t)p + 63) & ~(uintptr_t)63);
    int rc;
    long long mark = b->spent ? now_ns() : 0;
#define LC_SPENT(i)                                  \
    if (b->spent) {                                  \
        const long long t = now_ns();                \
        b->spent[i] += t - mark;                     \
        mark = t;                                    \
    }

    /* attention: norm, q/k/v as one job, rotary, the cache, the loop, o */
    lc_rms_norm(h, b->attn_norm, xn, dt, 1, b->dim, b->eps);
    LC_SPENT(2)
    {
        void* y[3] = {q, k, v};
        rc = gg_product(3, &b->qtype[W_Q], &b->w[W_Q], &b->row_bytes[W_Q], y, &out_of[W_Q], xn,
                        dt, dt, 1, b->dim, threads);
    }
    if (rc) goto done;
    LC_SPENT(0)
    lc_rotary(q, q, dt, b->cos_table, b->sin_table, pos, 1, b->n_heads, d, b->interleaved);
    lc_rotary(k, k, dt, b->cos_table, b->sin_table, pos, 1, b->n_kv_heads, d, b->interleaved);
    for (long g = 0; g < b->n_kv_heads; g++) {
        const size_t at = ((size_t)g * b->cache_len + pos) * d * es;
        memcpy((char*)b->k_cache + at, (char*)k + g * d * es, d * es);
        memcpy((char*)b->v_cache + at, (char*)v + g * d * es, d * es);
    }
    attn.b = b;
    attn.q = q;
    attn.out = att;
    attn.pos = pos;
    attn.block = block;
    attn.scratch = scratch;
    attn.unit_floats = unit_floats;
    job = (Job){.kind = KIND_ATTENTION, .units = b->n_kv_heads, .n_parts = 0};
    run_job(threads);
    LC_SPENT(1)
    {
        void* y[1] = {o};
        rc = gg_product(1, &b->qtype[W_O], &b->w[W_O], &b->row_bytes[W_O], y, &out_of[W_O], att,
                        dt, dt, 1, qdim, threads);
    }
    if (rc) goto done;
    LC_SPENT(0)
    lc_add(h, o, dt, b->dim);

    /* feed-forward: norm, gate/up as one job, SwiGLU, down */
    lc_rms_norm(h, b->ffn_norm, xn, dt, 1, b->dim, b->eps);
    LC_SPENT(2)
    {
        void* y[2] = {gate, up};
        rc = gg_product(2, &b->qtype[W_GATE], &b->w[W_GATE], &b->row_bytes[W_GATE], y,
                        &out_of[W_GATE], xn, dt, dt, 1, b->dim, threads);
    }
    if (rc) goto done;
    LC_SPENT(0)
    lc_swiglu(gate, up, a, dt, b->hidden);
    LC_SPENT(2)
    {
        void* y[1] = {o};
        rc = gg_product(1, &b->qtype[W_DOWN], &b->w[W_DOWN], &b->row_bytes[W_DOWN], y,
                        &out_of[W_DOWN], a, dt, dt, 1, b->hidden, threads);
    }
    if (rc) goto done;
    LC_SPENT(0)
    lc_add(h, o, dt, b->dim);
    LC_SPENT(2)
#undef LC_SPENT
done:
    pthread_mutex_unlock(&call_lock);
    return rc;
}
