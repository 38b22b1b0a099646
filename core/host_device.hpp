// GN_HOST_DEVICE marks the arithmetic that the CUDA kernels and the CPU (its
// engine and its tests) share: __host__ __device__ under nvcc, nothing for a
// plain C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define GN_HOST_DEVICE __host__ __device__
#else
#define GN_HOST_DEVICE
#endif
