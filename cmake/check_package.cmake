# Checks that other projects can use gradnoise, by building examples/consumer.
#   cmake -DCHECK=installed -DBUILD_DIR=... -DSOURCE_DIR=... [options] -P check_package.cmake
# CHECK=installed: installs BUILD_DIR into a prefix under it, builds the
#   consumer with find_package(gradnoise) against that prefix, runs it and the
#   installed `gradnoise --version`, and checks that no build-only include path
#   leaked into the exported target.
# CHECK=subproject: configures (only: a second full build would double the
#   test time) the consumer with gradnoise as its add_subdirectory.
# Also: GENERATOR, CONFIG, CXX_COMPILER, BINDIR (the install's bin folder);
# optionally CXX_FLAGS and LINKER_FLAGS (a sanitizer build's library needs its
# runtime in the consumer too), VERSION (that --version must print),
# PRIVATE_INCLUDE_DIRS (must not leak), CUDA_TOOLKIT_ROOT, and GRADNOISE_CUDA
# and CUDA_COMPILER for the subproject.
cmake_minimum_required(VERSION 3.24)

foreach(required CHECK BUILD_DIR SOURCE_DIR GENERATOR CONFIG CXX_COMPILER BINDIR)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "check_package.cmake needs -D${required}=...")
  endif()
endforeach()

# Runs a command; stops the check with its output when it fails.
function(run_step description)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE output
                  ERROR_VARIABLE output)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "${description} failed (${status}):\n${output}")
  endif()
  set(step_output "${output}" PARENT_SCOPE)
endfunction()

set(work_dir "${BUILD_DIR}/package-check/${CHECK}")
file(REMOVE_RECURSE "${work_dir}")
set(consumer_configure ${CMAKE_COMMAND} -S "${SOURCE_DIR}/examples/consumer"
  -B "${work_dir}/consumer" -G "${GENERATOR}" "-DCMAKE_BUILD_TYPE=${CONFIG}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}")
if(CUDA_TOOLKIT_ROOT)
  # The installed package's find_dependency(CUDAToolkit) finds the build's CUDA.
  list(APPEND consumer_configure "-DCUDAToolkit_ROOT=${CUDA_TOOLKIT_ROOT}")
endif()

if(CHECK STREQUAL "installed")
  set(prefix "${work_dir}/prefix")
  run_step("installing ${BUILD_DIR}" ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}"
    --config "${CONFIG}")

  file(GLOB exported_targets "${prefix}/lib*/cmake/gradnoise/gradnoiseTargets*.cmake")
  if(NOT exported_targets)
    message(FATAL_ERROR "the install has no lib*/cmake/gradnoise/gradnoiseTargets*.cmake")
  endif()
  foreach(file IN LISTS exported_targets)
    file(READ "${file}" exported)
    foreach(build_only_path IN LISTS PRIVATE_INCLUDE_DIRS SOURCE_DIR BUILD_DIR)
      if(build_only_path STREQUAL "")
        continue()
      endif()
      string(FIND "${exported}" "${build_only_path}" found_at)
      if(NOT found_at EQUAL -1)
        message(FATAL_ERROR "${file} names ${build_only_path}, a path only the build may use")
      endif()
    endforeach()
  endforeach()

  run_step("configuring examples/consumer against ${prefix}" ${consumer_configure}
    "-DCMAKE_PREFIX_PATH=${prefix}")
  run_step("building examples/consumer" ${CMAKE_COMMAND} --build "${work_dir}/consumer"
    --config "${CONFIG}")
  # Multi-config generators put the program in a folder named for the config.
  set(consumer "${work_dir}/consumer/consumer")
  if(EXISTS "${work_dir}/consumer/${CONFIG}/consumer")
    set(consumer "${work_dir}/consumer/${CONFIG}/consumer")
  endif()
  run_step("running examples/consumer" "${consumer}")
  message(STATUS "examples/consumer printed:\n${step_output}")

  run_step("running the installed gradnoise --version" "${prefix}/${BINDIR}/gradnoise"
    --version)
  message(STATUS "the installed gradnoise --version printed: ${step_output}")
  if(DEFINED VERSION)
    string(REPLACE "." "\\." version_pattern "${VERSION}")
    if(NOT step_output MATCHES "^gradnoise ${version_pattern}[ \n]")
      message(FATAL_ERROR "gradnoise --version printed '${step_output}', not the package version "
        "${VERSION}; host/report.cpp's GRADNOISE_VERSION must follow project(VERSION).")
    endif()
  endif()
elseif(CHECK STREQUAL "subproject")
  set(cuda_options "-DGRADNOISE_CUDA=${GRADNOISE_CUDA}")
  if(CUDA_COMPILER)
    list(APPEND cuda_options "-DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}")
  endif()
  run_step("configuring examples/consumer with add_subdirectory(${SOURCE_DIR})"
    ${consumer_configure} "-DGRADNOISE_SOURCE_DIR=${SOURCE_DIR}" ${cuda_options})
  message("${step_output}")
  # A parent that says nothing gets none of our tests, benchmarks and install rules.
  file(STRINGS "${work_dir}/consumer/CMakeCache.txt" defaults
    REGEX "^GRADNOISE_(BUILD_TESTS|BUILD_BENCH|INSTALL):BOOL=")
  foreach(option BUILD_TESTS BUILD_BENCH INSTALL)
    if(NOT defaults MATCHES "GRADNOISE_${option}:BOOL=OFF")
      message(FATAL_ERROR "as a subproject gradnoise must default GRADNOISE_${option} to OFF; "
        "the parent's cache has: ${defaults}")
    endif()
  endforeach()
else()
  message(FATAL_ERROR "CHECK must be installed or subproject, not '${CHECK}'")
endif()
