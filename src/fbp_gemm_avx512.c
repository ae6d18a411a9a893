/* fbp_gemm_avx512.c: the GEMM's AVX-512F code path.
 *
 * Design
 * ------
 * The templates of fbp_gemm_kernels.h instantiated with 64-byte _mm512
 * intrinsics and fused multiply-adds under target("avx512f,avx2,fma"):
 * micro-kernels 8 x 32 (f32) and 8 x 16 (f64), 16 accumulators; the small
 * path fbp_gemm_small_avx512_* and the serial blocked driver
 * fbp_gemm_blk_avx512_*, which fbp_gemm.c dispatches to when the ISA is
 * "avx512".  The epilogue is the FMA ISAs' shared 32-byte instance ("f"), as
 * on AVX2, so both FMA paths give the same epilogue bits.  FBP_PACK_WIDE, set
 * before the include, gives the packing the 256-bit transposes of the AVX2
 * file (compiled for AVX, which both have).  A file of its own
 * for the same reason as fbp_gemm_avx2.c.  Empty where the compiler does not
 * target x86.  No state: every write is to the
 * caller's C, to the caller's pre-packed op(B) (fbp_gemm_pack_b_*) or to
 * the calling thread's own packing buffer.
 */
#define FBP_PACK_WIDE 1 /* the 256-bit transposes of the packing */
#include "fbp_gemm_kernels.h"

#ifdef FBP_X86
/* --- avx512f -------------------------------------------------------------- */
#define TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
/* Blocking: MR512, MC512_*, JB512_* (fbp_gemm_internal.h). */

#define V_T __m512
#define V_I __m512i
#define V_LOAD _mm512_load_ps
#define V_LOADU _mm512_loadu_ps
#define V_STOREU _mm512_storeu_ps
#define V_SET1 _mm512_set1_ps
#define V_FMA _mm512_fmadd_ps
#define S_FMA __builtin_fmaf
#define V_MUL _mm512_mul_ps
DEFINE_KERNELS(uk_avx512_f32, float, TARGET_AVX512, MR512, 2, 16)
DEFINE_SMALL(fbp_gemm_small_avx512_f32, float, f32, f32f, TARGET_AVX512)
DEFINE_DRIVER(fbp_gemm_blk_avx512_f32, uk_avx512_f32, fbp_gemm_small_avx512_f32,
              float, f32, f32f, TARGET_AVX512,
              MR512, 32, MC512_F32, FBP_KC, NC_ALL, JB512_F32)
#include "fbp_gemm_vundef.h"

#define V_T __m512d
#define V_I __m512i
#define V_LOAD _mm512_load_pd
#define V_LOADU _mm512_loadu_pd
#define V_STOREU _mm512_storeu_pd
#define V_SET1 _mm512_set1_pd
#define V_FMA _mm512_fmadd_pd
#define S_FMA __builtin_fma
#define V_MUL _mm512_mul_pd
DEFINE_KERNELS(uk_avx512_f64, double, TARGET_AVX512, MR512, 2, 8)
DEFINE_SMALL(fbp_gemm_small_avx512_f64, double, f64, f64f, TARGET_AVX512)
DEFINE_DRIVER(fbp_gemm_blk_avx512_f64, uk_avx512_f64, fbp_gemm_small_avx512_f64,
              double, f64, f64f, TARGET_AVX512,
              MR512, 16, MC512_F64, FBP_KC, NC_ALL, JB512_F64)
#include "fbp_gemm_vundef.h"
#endif /* FBP_X86 */
