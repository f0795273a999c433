// Portability macros: let one function body compile for host and device.
#pragma once

#if defined(__CUDACC__)
#define KVQ_HOST_DEVICE __host__ __device__
#define KVQ_DEVICE __device__
#else
#define KVQ_HOST_DEVICE
#define KVQ_DEVICE
#endif

#define KVQ_INLINE inline

// True while compiling the device side of a CUDA translation unit.
#if defined(__CUDA_ARCH__)
#define KVQ_IS_DEVICE_CODE 1
#else
#define KVQ_IS_DEVICE_CODE 0
#endif
