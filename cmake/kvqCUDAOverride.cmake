# Loaded through CMAKE_USER_MAKE_RULES_OVERRIDE_CUDA (see kvqEnableCUDA.cmake),
# right after CMake's Compiler/NVIDIA-CUDA.cmake and before CUDA compile
# feature detection. CMake < 3.26 lacks the C++20 flag for nvcc; nvcc >= 12
# accepts -std=c++20. Only fills the gap, never overrides CMake's own value.
if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA"
   AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.0
   AND NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
endif()
