/* fbp_gemm_vundef.h: ends one instantiation of fbp_gemm_kernels.h's templates.
 *
 * Each per-ISA file (fbp_gemm_{generic,avx2,avx512}.c) defines the vector
 * primitives V_T, V_I, V_LOAD, V_LOADU, V_STOREU, V_SET1, V_FMA, S_FMA and V_MUL,
 * expands DEFINE_KERNELS / DEFINE_SMALL / DEFINE_DRIVER once per dtype, then
 * includes this file so that the next dtype starts from a clean slate.  No
 * include guard: it is meant to be included many times.
 */
#undef V_T
#undef V_I
#undef V_LOAD
#undef V_LOADU
#undef V_STOREU
#undef V_SET1
#undef V_FMA
#undef S_FMA
#undef V_MUL
