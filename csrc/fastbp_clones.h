/* FASTBP_CLONES: compile a function of a csrc header for the baseline instruction set and for AVX2 and
   AVX-512F, one chosen at load time from what the CPU reports (GCC's target_clones: an ifunc, glibc on
   x86-64), so a module still runs on any x86-64 and nothing changes the process's floating-point mode.
   For loops that move a lot of data per operation (the Winograd transforms: one thread, the benchmark
   conv's forward took 0.90x, its backward 0.96x the time with the AVX-512 code). Only for functions whose
   result does not depend on the vector width: additions in the order the C gives (ISO C mode: no
   contraction, no reassociation), so every clone computes the same bits. FASTBP_NO_CLONES=1 at build
   time (setup.py), another compiler or another platform: the baseline only. The clones need an ifunc,
   which glibc's loader resolves; musl (Alpine, musllinux wheels) has none, so __GLIBC__ is required too
   (setup.py also test-builds a cloned function and defines FASTBP_NO_CLONES when that fails). */
#ifndef FASTBP_CLONES_H
#define FASTBP_CLONES_H
#include <limits.h> /* on glibc this defines __GLIBC__ (through <features.h>); on musl nothing does */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && defined(__GLIBC__) && !defined(FASTBP_NO_CLONES)
#define FASTBP_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#define FASTBP_HAVE_CLONES 1
#else
#define FASTBP_CLONES
#define FASTBP_HAVE_CLONES 0
#endif

/* The variant the loader picks for this CPU (GCC's resolver takes the highest the CPU supports:
   AVX-512F, then AVX2, then the baseline), for `fastbp info`. */
static const char* fastbp_clone_variant(void)
{
#if FASTBP_HAVE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return "avx512f";
    if (__builtin_cpu_supports("avx2"))
        return "avx2";
    return "baseline";
#else
    return "baseline (built without clones)";
#endif
}
#endif
