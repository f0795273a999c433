# kvq_dev_target(<target>)
# Settings for kvq's own tests/examples/benchmarks only -- never the library
# target and never global:
#   - warnings: -Wall -Wextra (GCC/Clang), /W4 (MSVC); CUDA sources get the
#     host compiler's -Wall through -Xcompiler;
#   - strict ISO C++ (-std=c++20 rather than -std=gnu++20), so that the
#     headers are tested the way consumers without GNU extensions use them.
function(kvq_dev_target target)
  target_compile_options(${target} PRIVATE
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU,Clang,AppleClang>>:-Wall -Wextra>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:MSVC>>:/W4>
    $<$<COMPILE_LANG_AND_ID:CUDA,NVIDIA>:-Xcompiler=-Wall>)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF CUDA_EXTENSIONS OFF)
endfunction()
