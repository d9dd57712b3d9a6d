/* OpenMP shim: the real omp.h when the build probe enabled -fopenmp, serial stand-ins otherwise. */
#ifndef FASTBP_OMP_H
#define FASTBP_OMP_H
#include "fastbp_compat.h" /* static inline for MSVC C */
#ifdef _OPENMP
#include <omp.h>
#define FASTBP_HAVE_OPENMP 1
#else
#define FASTBP_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
#endif
#endif
