/* Batch-1 int8 weight x 16-bit activation product for Loopchat's decode step (engine/native.py).
 *
 * Why it exists: torch's CPU int8 kernel converts every weight to float before its FMA, which caps
 * it near 10 GB/s of weights per core on the development machine (AMD EPYC), while the same core
 * reads memory at ~20 GB/s. Integer multiply-add instructions (pmaddwd, or vpdpwssd with VNNI)
 * take 32 weights per instruction without a conversion, so the product streams at memory speed.
 *
 * Numerics: the activations are rounded once to 16-bit integers per group of GROUP inputs, with a
 * power-of-two scale per group. For bfloat16 activations that rounding is exact for every value
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

#define LC_ABI 1
#define GROUP 128
#define MAX_THREADS 64
#define SPIN_ROUNDS 20000
#define SPIN_BURST 200
#define SPIN_NS 2000000LL

enum { DT_BF16 = 0, DT_F32 = 1 };

int lc_abi(void) { return LC_ABI; }

const char* lc_isa(void) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
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

typedef struct {
    const int8_t* w;
    const float* scales;
    const int16_t* xq;
    const float* gscale;
    void* y;
    int y_dtype;
    long k;
    long n;
    long chunk;
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

static void run_chunk(long c) {
    long r0 = c * job.chunk;
    long r1 = r0 + job.chunk < job.n ? r0 + job.chunk : job.n;
    for (long r = r0; r < r1; r++) {
        float v = row_dot(job.w + r * job.k, job.xq, job.gscale, job.k) * job.scales[r];
        if (job.y_dtype == DT_BF16)
            ((uint16_t*)job.y)[r] = f32_to_bf16(v);
        else
            ((float*)job.y)[r] = v;
    }
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
 * Entry point.
 *
 * y[r] = scales[r] * sum_i w[r, i] * x[i] for r < n, with w int8 [n, k] row-major, scales float32,
 * x and y bfloat16 or float32 (x_dtype, y_dtype), `threads` threads at most (the caller's included).
 * Calls from several threads run one after another. Returns 0, -1 for arguments it cannot take,
 * -2 when out of memory.
 */
static void* scratch;
static long scratch_k;

int lc_int8_matvec(const int8_t* w, const float* scales, const void* x, int x_dtype, void* y,
                   int y_dtype, long n, long k, int threads) {
    if (n <= 0 || k <= 0 || n >= (1L << 31) || threads < 1) return -1;
    if ((x_dtype != DT_BF16 && x_dtype != DT_F32) || (y_dtype != DT_BF16 && y_dtype != DT_F32))
        return -1;
    pthread_mutex_lock(&call_lock);
    long groups = (k + GROUP - 1) / GROUP;
    if (k > scratch_k) {
        void* grown = realloc(scratch, (size_t)(k * 2 + groups * 4 + 64));
        if (!grown) {
            pthread_mutex_unlock(&call_lock);
            return -2;
        }
        scratch = grown;
        scratch_k = k;
    }
    int16_t* xq = (int16_t*)scratch;
    float* gscale = (float*)(((uintptr_t)(xq + k) + 15) & ~(uintptr_t)15);
    for (long g = 0; g < groups; g++) {
        long g0 = g * GROUP, end = g0 + GROUP < k ? g0 + GROUP : k;
        float big = 0.0f;
        for (long i = g0; i < end; i++) {
            float v = x_dtype == DT_BF16 ? bf16_to_f32(((const uint16_t*)x)[i]) : ((const float*)x)[i];
            float a = fabsf(v);
            if (a > big || a != a) big = a; /* NaN propagates below */
        }
        int e = 0;
        if (big > 0.0f && isfinite(big)) frexpf(big, &e); /* big < 2^e */
        float scale = ldexpf(1.0f, e - 15), inv = ldexpf(1.0f, 15 - e);
        gscale[g] = isfinite(big) ? scale : big;
        for (long i = g0; i < end; i++) {
            float v = x_dtype == DT_BF16 ? bf16_to_f32(((const uint16_t*)x)[i]) : ((const float*)x)[i];
            float q = isfinite(big) ? nearbyintf(v * inv) : 0.0f;
            xq[i] = (int16_t)(q > 32767.0f ? 32767.0f : (q < -32767.0f ? -32767.0f : q));
        }
    }

    job.w = w;
    job.scales = scales;
    job.xq = xq;
    job.gscale = gscale;
    job.y = y;
    job.y_dtype = y_dtype;
    job.k = k;
    job.n = n;
    long chunk = (n + 8L * threads - 1) / (8L * threads); /* ~8 chunks per thread */
    job.chunk = chunk < 4 ? 4 : chunk;
    job.chunks = (n + job.chunk - 1) / job.chunk;
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
    pthread_mutex_unlock(&call_lock);
    return 0;
}
