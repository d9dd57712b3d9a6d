/* Portability of the C headers: `restrict` is C99, but MSVC compiles C as C89 plus extensions unless
   given /std:c11 or later (then it defines __STDC_VERSION__ and knows the keyword); without it the
   keyword is spelled __restrict, and `inline` (C99 too) __inline. C++ has no `restrict` either. */
#ifndef FASTBP_COMPAT_H
#define FASTBP_COMPAT_H
#if defined(__cplusplus)
#define restrict __restrict
#elif defined(_MSC_VER) && (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 199901L)
#define restrict __restrict
#ifndef inline
#define inline __inline
#endif
#endif
#endif
