/* fbp_gemm_generic.c: the GEMM's generic code path (any x86-64 or other CPU).
 *
 * Design
 * ------
 * The templates of fbp_gemm_kernels.h instantiated for 16-byte GCC vectors
 * (SSE2 on x86-64) with a plain multiply then add (no FMA): micro-kernels
 * 6 x 8 (f32) and 6 x 4 (f64), the small path fbp_gemm_small_generic_* and
 * the serial blocked driver fbp_gemm_blk_generic_*, which fbp_gemm.c
 * dispatches to when the ISA is "generic".  A file of its own, like each ISA,
 * so that one code path's instantiation and vector primitives sit together
 * and apart from the driver.  No state: every write is to the
 * caller's C, to the caller's pre-packed op(B) (fbp_gemm_pack_b_*) or to
 * the calling thread's own packing buffer.
 */
#include "fbp_gemm_kernels.h"

/* --- generic: 16-byte GCC vectors, plain mul + add --------------------- */
typedef float gv_f32 __attribute__((vector_size(16)));
typedef double gv_f64 __attribute__((vector_size(16)));
typedef int64_t gv_i __attribute__((vector_size(16)));
#define TARGET_GENERIC

#define V_T gv_f32
#define V_I gv_i
#define V_LOAD(p) (*(const gv_f32 *)(p))
#define V_LOADU(p) ({ gv_f32 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define V_STOREU(p, x) ({ gv_f32 v_ = (x); memcpy((p), &v_, sizeof v_); })
#define V_SET1(s) ((gv_f32){(s), (s), (s), (s)})
#define V_FMA(x, y, z) ((x) * (y) + (z))
#define S_FMA(x, y, z) ((x) * (y) + (z)) /* scalar twin of V_FMA */
#define V_MUL(x, y) ((x) * (y))
DEFINE_KERNELS(uk_generic_f32, float, TARGET_GENERIC, 6, 2, 4)
DEFINE_SMALL(fbp_gemm_small_generic_f32, float, f32, f32, TARGET_GENERIC)
DEFINE_DRIVER(fbp_gemm_blk_generic_f32, uk_generic_f32, fbp_gemm_small_generic_f32,
              float, f32, f32, TARGET_GENERIC,
              6, 8, MC_F32, FBP_KC, NC_ALL, 0)
#include "fbp_gemm_vundef.h"

#define V_T gv_f64
#define V_I gv_i
#define V_LOAD(p) (*(const gv_f64 *)(p))
#define V_LOADU(p) ({ gv_f64 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define V_STOREU(p, x) ({ gv_f64 v_ = (x); memcpy((p), &v_, sizeof v_); })
#define V_SET1(s) ((gv_f64){(s), (s)})
#define V_FMA(x, y, z) ((x) * (y) + (z))
#define S_FMA(x, y, z) ((x) * (y) + (z))
#define V_MUL(x, y) ((x) * (y))
DEFINE_KERNELS(uk_generic_f64, double, TARGET_GENERIC, 6, 2, 2)
DEFINE_SMALL(fbp_gemm_small_generic_f64, double, f64, f64, TARGET_GENERIC)
DEFINE_DRIVER(fbp_gemm_blk_generic_f64, uk_generic_f64, fbp_gemm_small_generic_f64,
              double, f64, f64, TARGET_GENERIC,
              6, 4, MC_F64, FBP_KC, NC_ALL, 0)
#include "fbp_gemm_vundef.h"
