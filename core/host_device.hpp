// GN_HOST_DEVICE marks the arithmetic that the CUDA kernels and the CPU (its
// engine and its tests) share: __host__ __device__ under nvcc, nothing for a
// plain C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define GN_HOST_DEVICE __host__ __device__
// Before a __host__ __device__ template that calls what it is given: the
// callable (a host lambda, say) decides where the instantiation may run.
#define GN_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
// Before a loop: nvcc unrolls it n times (n a constant expression; more
// independent loads in flight per thread); the host compiler decides itself.
#define GN_PRAGMA(x) _Pragma(#x)
#define GN_UNROLL(n) GN_PRAGMA(unroll n)
#else
#define GN_HOST_DEVICE
#define GN_EXEC_CHECK_DISABLE
#define GN_UNROLL(n)
#endif

#include <cstdint>

namespace gradnoise {

/// Element i at base[i · stride]: lets one row function (a loss's error row,
/// say) read and write sample-major, feature-major and interleaved buffers.
template <typename T>
struct Strided {
  T* base = nullptr;
  std::int64_t stride = 1;
  GN_HOST_DEVICE T& operator[](std::int64_t i) const { return base[i * stride]; }
};

}  // namespace gradnoise
