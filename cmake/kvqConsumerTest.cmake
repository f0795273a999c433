# Script mode (cmake -P) driver for the "consumer_package" and
# "consumer_subdirectory" ctest tests (registered in tests/CMakeLists.txt).
#
#   package:       cmake --install <kvq build> --prefix <work>/prefix, then
#                  configure tests/consumer with CMAKE_PREFIX_PATH=<work>/prefix
#                  (find_package(kvq 0.1 CONFIG REQUIRED)), build, run.
#   subdirectory:  configure tests/consumer with -DKVQ_CONSUMER_USE_SUBDIRECTORY=ON
#                  -DKVQ_SOURCE_DIR=<kvq source> (add_subdirectory), build, run.
#
# Inputs (-D...): KVQ_MODE, KVQ_SOURCE_DIR, KVQ_BINARY_DIR, KVQ_CONSUMER_SOURCE_DIR,
# KVQ_WORK_DIR, KVQ_GENERATOR, and optionally KVQ_GENERATOR_PLATFORM,
# KVQ_GENERATOR_TOOLSET, KVQ_MAKE_PROGRAM, KVQ_CXX_COMPILER, KVQ_CONFIG,
# KVQ_ENABLE_CUDA, KVQ_CUDA_COMPILER, KVQ_CUDA_HOST_COMPILER,
# KVQ_CUDA_ARCHITECTURES (list separated by '|').
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS KVQ_MODE KVQ_SOURCE_DIR KVQ_BINARY_DIR KVQ_CONSUMER_SOURCE_DIR KVQ_WORK_DIR KVQ_GENERATOR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "kvqConsumerTest.cmake: ${var} must be set")
  endif()
endforeach()
if(NOT KVQ_MODE MATCHES "^(package|subdirectory)$")
  message(FATAL_ERROR "kvqConsumerTest.cmake: KVQ_MODE must be 'package' or 'subdirectory', got '${KVQ_MODE}'")
endif()

function(kvq_step name)
  message(STATUS "[${KVQ_MODE}] ${name}")
  execute_process(COMMAND ${ARGN}
    COMMAND_ECHO STDOUT
    RESULT_VARIABLE rv)
  if(NOT rv EQUAL 0)
    message(FATAL_ERROR "[${KVQ_MODE}] step '${name}' failed (${rv})")
  endif()
endfunction()

set(build_dir "${KVQ_WORK_DIR}/build")
set(prefix "${KVQ_WORK_DIR}/prefix")
file(REMOVE_RECURSE "${KVQ_WORK_DIR}")
file(MAKE_DIRECTORY "${KVQ_WORK_DIR}")

set(config_args)
if(NOT "${KVQ_CONFIG}" STREQUAL "")
  set(config_args --config "${KVQ_CONFIG}")
endif()

set(configure_args -S "${KVQ_CONSUMER_SOURCE_DIR}" -B "${build_dir}" -G "${KVQ_GENERATOR}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(KVQ_GENERATOR_PLATFORM)
  list(APPEND configure_args -A "${KVQ_GENERATOR_PLATFORM}")
endif()
if(KVQ_GENERATOR_TOOLSET)
  list(APPEND configure_args -T "${KVQ_GENERATOR_TOOLSET}")
endif()
if(KVQ_MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${KVQ_MAKE_PROGRAM}")
endif()
if(KVQ_CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${KVQ_CXX_COMPILER}")
endif()
if(NOT "${KVQ_CONFIG}" STREQUAL "")
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${KVQ_CONFIG}")
endif()

if(KVQ_MODE STREQUAL "package")
  kvq_step("install kvq into ${prefix}"
    "${CMAKE_COMMAND}" --install "${KVQ_BINARY_DIR}" --prefix "${prefix}" ${config_args})
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}" -DKVQ_CONSUMER_USE_SUBDIRECTORY=OFF)
else()
  list(APPEND configure_args -DKVQ_CONSUMER_USE_SUBDIRECTORY=ON "-DKVQ_SOURCE_DIR=${KVQ_SOURCE_DIR}")
  if(DEFINED KVQ_ENABLE_CUDA AND NOT "${KVQ_ENABLE_CUDA}" STREQUAL "")
    list(APPEND configure_args "-DKVQ_ENABLE_CUDA=${KVQ_ENABLE_CUDA}")
  endif()
  if(KVQ_ENABLE_CUDA)
    if(KVQ_CUDA_COMPILER)
      list(APPEND configure_args "-DCMAKE_CUDA_COMPILER=${KVQ_CUDA_COMPILER}")
    endif()
    if(KVQ_CUDA_HOST_COMPILER)
      list(APPEND configure_args "-DCMAKE_CUDA_HOST_COMPILER=${KVQ_CUDA_HOST_COMPILER}")
    endif()
    if(KVQ_CUDA_ARCHITECTURES)
      string(REPLACE "|" ";" archs "${KVQ_CUDA_ARCHITECTURES}")
      list(APPEND configure_args "-DCMAKE_CUDA_ARCHITECTURES=${archs}")
    endif()
  endif()
endif()

kvq_step("configure consumer" "${CMAKE_COMMAND}" ${configure_args})

if(KVQ_MODE STREQUAL "package")
  # Make sure the consumer really used the freshly installed package.
  file(STRINGS "${build_dir}/CMakeCache.txt" kvq_dir_line REGEX "^kvq_DIR:")
  string(REGEX REPLACE "^kvq_DIR:[A-Z]+=" "" kvq_dir "${kvq_dir_line}")
  file(REAL_PATH "${prefix}" real_prefix)
  if(EXISTS "${kvq_dir}")
    file(REAL_PATH "${kvq_dir}" kvq_dir)
  endif()
  string(FIND "${kvq_dir}" "${real_prefix}/" pos)
  if(NOT pos EQUAL 0)
    message(FATAL_ERROR "[package] consumer found kvq at '${kvq_dir}', not under '${real_prefix}'")
  endif()
  message(STATUS "[package] consumer used kvq_DIR=${kvq_dir}")
endif()

kvq_step("build consumer" "${CMAKE_COMMAND}" --build "${build_dir}" ${config_args})

set(ctest_config)
if(NOT "${KVQ_CONFIG}" STREQUAL "")
  set(ctest_config -C "${KVQ_CONFIG}")
endif()
kvq_step("run consumer" "${CMAKE_CTEST_COMMAND}" --test-dir "${build_dir}" ${ctest_config}
  --output-on-failure --verbose --no-tests=error)
