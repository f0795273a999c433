# Enables the CUDA language for kvq (included from the top-level
# CMakeLists.txt when KVQ_ENABLE_CUDA is ON; runs in that file's scope because
# enable_language() must not be called from inside a function).
#
# CMake < 3.26 does not know "-std=c++20" for nvcc, so cuda_std_20 is
# unknown there even though nvcc >= 12 supports it. Before enabling CUDA we
# point CMAKE_USER_MAKE_RULES_OVERRIDE_CUDA (the documented hook that is
# loaded right after CMake's own compiler rules and before the compile
# feature detection) at kvqCUDAOverride.cmake, which only fills in the
# missing CMAKE_CUDA20_STANDARD_COMPILE_OPTION. Newer CMake versions define
# it themselves, in which case the override does nothing.

if(NOT CMAKE_CUDA_COMPILER)
  check_language(CUDA)
endif()
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR
    "kvq: KVQ_ENABLE_CUDA=ON but no CUDA compiler was found.\n"
    "Put nvcc (CUDA >= 13) on PATH (e.g. export PATH=\$PATH:/usr/local/cuda/bin), "
    "set CUDACXX or -DCMAKE_CUDA_COMPILER=/path/to/nvcc, or configure without CUDA "
    "(-DKVQ_ENABLE_CUDA=OFF, e.g. `cmake --preset host-nocuda`).")
endif()

if(NOT CMAKE_CUDA_COMPILER_LOADED)  # not yet enabled (by us or a parent project)
  if(NOT DEFINED CMAKE_USER_MAKE_RULES_OVERRIDE_CUDA)
    set(CMAKE_USER_MAKE_RULES_OVERRIDE_CUDA "${CMAKE_CURRENT_LIST_DIR}/kvqCUDAOverride.cmake")
  endif()
  enable_language(CUDA)
endif()

if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13.0)
  message(FATAL_ERROR
    "kvq: the device headers (include/kvq/cuda) need CUDA >= 13, but "
    "${CMAKE_CUDA_COMPILER} is version ${CMAKE_CUDA_COMPILER_VERSION}. "
    "Point CMAKE_CUDA_COMPILER at a CUDA 13 nvcc or configure with -DKVQ_ENABLE_CUDA=OFF.")
endif()

find_package(CUDAToolkit REQUIRED)
if(CUDAToolkit_VERSION VERSION_LESS 13.0)
  message(FATAL_ERROR
    "kvq: found CUDA toolkit ${CUDAToolkit_VERSION} at ${CUDAToolkit_BIN_DIR}; CUDA >= 13 is required "
    "(set CUDAToolkit_ROOT) or configure with -DKVQ_ENABLE_CUDA=OFF.")
endif()
