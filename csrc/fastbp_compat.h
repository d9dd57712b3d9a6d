/* Portability of the C headers: `restrict` is C99, but MSVC compiles C as C89 plus extensions unless
   given /std:c11 or later; there it is spelled __restrict. C++ has no `restrict` either. */
#ifndef FASTBP_COMPAT_H
#define FASTBP_COMPAT_H
#if defined(__cplusplus)
#define restrict __restrict
#elif defined(_MSC_VER) && !defined(__clang__) && (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L)
#define restrict __restrict
#endif
#endif
