/* fbp_gemm_avx2.c: the GEMM's AVX2 + FMA code path.
 *
 * Design
 * ------
 * The templates of fbp_gemm_kernels.h instantiated with 32-byte _mm256
 * intrinsics and fused multiply-adds (V_FMA = _mm256_fmadd_*, its scalar
 * twin S_FMA = __builtin_fma*) under target("avx2,fma"): micro-kernels
 * 6 x 16 (f32) and 6 x 8 (f64), 12 accumulators; the small path
 * fbp_gemm_small_avx2_* and the serial blocked driver fbp_gemm_blk_avx2_*,
 * which fbp_gemm.c dispatches to when the ISA is "avx2"; FBP_PACK_WIDE, set
 * before the include, gives the packing its 256-bit transposes (8 x 8
 * floats, 4 x 4 doubles: fbp_gemm_kernels.h).  A file of its own
 * so that the target attribute and the vector primitives of one ISA sit
 * together, apart from the ISA-neutral driver (which must not be compiled
 * for AVX2: it runs on every CPU).  Empty where the compiler does not
 * target x86.  No state: every write is to the
 * caller's C, to the caller's pre-packed op(B) (fbp_gemm_pack_b_*) or to
 * the calling thread's own packing buffer.
 */
#define FBP_PACK_WIDE 1 /* the 256-bit transposes of the packing */
#include "fbp_gemm_kernels.h"

#ifdef FBP_X86
/* --- avx2 + fma ---------------------------------------------------------- */
#define TARGET_AVX2 __attribute__((target("avx2,fma")))

#define V_T __m256
#define V_I __m256i
#define V_LOAD _mm256_load_ps
#define V_LOADU _mm256_loadu_ps
#define V_STOREU _mm256_storeu_ps
#define V_SET1 _mm256_set1_ps
#define V_FMA _mm256_fmadd_ps
#define S_FMA __builtin_fmaf /* scalar twin of V_FMA */
#define V_MUL _mm256_mul_ps
DEFINE_KERNELS(uk_avx2_f32, float, TARGET_AVX2, 6, 2, 8)
DEFINE_SMALL(fbp_gemm_small_avx2_f32, float, f32, f32f, TARGET_AVX2)
DEFINE_DRIVER(fbp_gemm_blk_avx2_f32, uk_avx2_f32, fbp_gemm_small_avx2_f32,
              float, f32, f32f, TARGET_AVX2,
              6, 16, MC_F32, FBP_KC, NC_ALL, 0)
#include "fbp_gemm_vundef.h"

#define V_T __m256d
#define V_I __m256i
#define V_LOAD _mm256_load_pd
#define V_LOADU _mm256_loadu_pd
#define V_STOREU _mm256_storeu_pd
#define V_SET1 _mm256_set1_pd
#define V_FMA _mm256_fmadd_pd
#define S_FMA __builtin_fma
#define V_MUL _mm256_mul_pd
DEFINE_KERNELS(uk_avx2_f64, double, TARGET_AVX2, 6, 2, 4)
DEFINE_SMALL(fbp_gemm_small_avx2_f64, double, f64, f64f, TARGET_AVX2)
DEFINE_DRIVER(fbp_gemm_blk_avx2_f64, uk_avx2_f64, fbp_gemm_small_avx2_f64,
              double, f64, f64f, TARGET_AVX2,
              6, 8, MC_F64, FBP_KC, NC_ALL, 0)
#include "fbp_gemm_vundef.h"
#endif /* FBP_X86 */
