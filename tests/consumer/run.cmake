# cmake -P driver of the package test: install bilevel's build tree into a fresh prefix, build
# and run tests/consumer against it with find_package, against the build tree, with
# add_subdirectory, then build it from bilevel.pc's pkg-config flags alone.
#   -DBILEVEL_SOURCE_DIR=<src> -DBILEVEL_BINARY_DIR=<configured build> -DBILEVEL_VERSION=<x.y.z>
#   -DWORK_DIR=<scratch dir, emptied first> [-DCXX_COMPILER=<c++>] [-DWITH_MPI=ON]
cmake_minimum_required(VERSION 3.20)

foreach(required BILEVEL_SOURCE_DIR BILEVEL_BINARY_DIR BILEVEL_VERSION WORK_DIR)
  if(NOT DEFINED ${required})
    message(FATAL_ERROR "run.cmake: -D${required}=... is required")
  endif()
endforeach()
set(consumer_source ${CMAKE_CURRENT_LIST_DIR})
set(prefix ${WORK_DIR}/prefix)
# No compiler given: the consumer picks its own, as a user's project would.
set(compiler_args)
if(CXX_COMPILER)
  set(compiler_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()

# run(<step> <command...>): the command must succeed; its output is shown when it does not.
# Leaves the combined output in run_output.
function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output
                  ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${step} failed (${result}):\n${ARGN}\n${output}")
  endif()
  message(STATUS "${step}: ok")
  set(run_output "${output}" PARENT_SCOPE)
endfunction()

# build_and_run(<name> <configure args...>): a fresh consumer build that must compile without
# warnings, without flags that only bilevel's own targets use, and whose program must pass.
function(build_and_run name)
  set(build ${WORK_DIR}/${name})
  run("${name}: configure" ${CMAKE_COMMAND} -S ${consumer_source} -B ${build} ${compiler_args}
      ${ARGN})
  set(configure_output "${run_output}")
  run("${name}: build" ${CMAKE_COMMAND} --build ${build} --verbose)
  set(build_output "${run_output}" PARENT_SCOPE)
  foreach(forbidden "warning:" "-Werror" "-march=")
    string(FIND "${run_output}" "${forbidden}" at)
    if(NOT at EQUAL -1)
      message(FATAL_ERROR "${name}: the consumer build log contains '${forbidden}':\n${run_output}")
    endif()
  endforeach()
  run("${name}: run" ${build}/consumer)
  string(STRIP "${run_output}" run_output)
  message(STATUS "${run_output}")
  set(configure_output "${configure_output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

# 1. Install: header-only, so the bilevel build tree needs configuring, not building.
run("install" ${CMAKE_COMMAND} --install ${BILEVEL_BINARY_DIR} --prefix ${prefix})
foreach(installed include/bilevel/bilevel.hpp share/cmake/bilevel/bilevelConfig.cmake
        share/cmake/bilevel/bilevelConfigVersion.cmake share/cmake/bilevel/bilevelTargets.cmake
        share/pkgconfig/bilevel.pc share/doc/bilevel/methods.md)
  if(NOT EXISTS ${prefix}/${installed})
    file(GLOB_RECURSE listing RELATIVE ${prefix} ${prefix}/*)
    list(FILTER listing EXCLUDE REGEX "^include/bilevel/.+/")
    message(FATAL_ERROR "install: ${installed} missing under ${prefix}; found:\n${listing}")
  endif()
endforeach()

# 2. find_package(bilevel <major.minor> CONFIG) from the installed prefix only.
string(REGEX MATCH "^([0-9]+)\\.([0-9]+)" major_minor "${BILEVEL_VERSION}")
set(major ${CMAKE_MATCH_1})
math(EXPR next_minor "${CMAKE_MATCH_2} + 1")
build_and_run(find-package -DCMAKE_PREFIX_PATH=${prefix} -DBILEVEL_CONSUMER_VERSION=${major_minor}
              -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
string(FIND "${configure_output}" "from ${prefix}/share/cmake/bilevel" at)
if(at EQUAL -1)
  message(FATAL_ERROR "find-package: bilevel was not found in ${prefix}:\n${configure_output}")
endif()

# SameMinorVersion: the next minor version must be refused.
execute_process(COMMAND ${CMAKE_COMMAND} -S ${consumer_source} -B ${WORK_DIR}/next-minor
                        ${compiler_args} -DCMAKE_PREFIX_PATH=${prefix}
                        -DBILEVEL_CONSUMER_VERSION=${major}.${next_minor}
                        -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
                RESULT_VARIABLE result OUTPUT_QUIET ERROR_QUIET)
if(result EQUAL 0)
  message(FATAL_ERROR "find_package(bilevel ${major}.${next_minor}) accepted ${BILEVEL_VERSION}")
endif()
message(STATUS "find_package(bilevel ${major}.${next_minor}) refused: ok")

# bilevel::optimized: its settings reach the consumer's compile and link lines (the consumer
# sets no build type, the case these settings are for).
build_and_run(find-package-optimized -DCMAKE_PREFIX_PATH=${prefix} -DBILEVEL_CONSUMER_OPTIMIZED=ON
              -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
foreach(expected "-O3" "-fopenmp" "-DEIGEN_NO_DEBUG" "-DEIGEN_STACK_ALLOCATION_LIMIT=2097152")
  string(FIND "${build_output}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "find-package-optimized: no '${expected}' in the build log:\n"
                        "${build_output}")
  endif()
endforeach()

# The optional mpi component, when bilevel was configured with it (-DWITH_MPI=ON).
if(WITH_MPI)
  build_and_run(find-package-mpi -DCMAKE_PREFIX_PATH=${prefix} -DBILEVEL_CONSUMER_MPI=ON
                -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
endif()

# The build tree's package files, for users who point bilevel_DIR at an uninstalled build.
build_and_run(build-tree -Dbilevel_DIR=${BILEVEL_BINARY_DIR} -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
string(FIND "${configure_output}" "from ${BILEVEL_BINARY_DIR}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "build-tree: bilevel was not found in ${BILEVEL_BINARY_DIR}:\n"
                      "${configure_output}")
endif()

# 3. add_subdirectory, with the install rules on to check they also work in a subproject.
build_and_run(add-subdirectory -DBILEVEL_CONSUMER_SUBDIRECTORY=${BILEVEL_SOURCE_DIR}
              -DBILEVEL_INSTALL=ON)

# 4. pkg-config.
find_program(PKG_CONFIG_EXECUTABLE NAMES pkg-config pkgconf)
if(NOT PKG_CONFIG_EXECUTABLE)
  message(STATUS "SKIPPED the pkg-config check: pkg-config is not installed "
                 "(Debian package pkg-config)")
  return()
endif()
set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
run("pkg-config --modversion" ${PKG_CONFIG_EXECUTABLE} --modversion bilevel)
string(STRIP "${run_output}" version)
if(NOT version STREQUAL BILEVEL_VERSION)
  message(FATAL_ERROR "pkg-config: version '${version}', expected ${BILEVEL_VERSION}")
endif()
run("pkg-config --cflags" ${PKG_CONFIG_EXECUTABLE} --cflags bilevel)
string(STRIP "${run_output}" cflags)
message(STATUS "pkg-config --cflags bilevel: ${cflags}")
separate_arguments(cflags UNIX_COMMAND "${cflags}")
if(NOT "-std=c++20" IN_LIST cflags)
  message(FATAL_ERROR "pkg-config: no -std=c++20 in ${cflags}")
endif()
set(found_headers FALSE)
foreach(flag IN LISTS cflags)
  # Nested: CMAKE_MATCH_1 is set only once MATCHES has been evaluated.
  if(flag MATCHES "^-I(.+)$")
    file(REAL_PATH "${CMAKE_MATCH_1}" dir)
    file(REAL_PATH "${prefix}/include" expected)
    if(dir STREQUAL expected AND EXISTS "${dir}/bilevel/bilevel.hpp")
      set(found_headers TRUE)
    endif()
  endif()
endforeach()
if(NOT found_headers)
  message(FATAL_ERROR "pkg-config: no -I to ${prefix}/include in ${cflags}")
endif()
run("pkg-config --libs" ${PKG_CONFIG_EXECUTABLE} --libs bilevel)
string(STRIP "${run_output}" libs)
separate_arguments(libs UNIX_COMMAND "${libs}")
if(NOT "-lz" IN_LIST libs)
  message(FATAL_ERROR "pkg-config: --libs bilevel lacks zlib's -lz: ${libs}")
endif()
# A Makefile user's build: the consumer from those flags alone.
if(NOT CXX_COMPILER)
  find_program(CXX_COMPILER NAMES c++ g++ clang++ REQUIRED)
endif()
run("pkg-config: build" ${CXX_COMPILER} ${cflags} ${consumer_source}/main.cpp ${libs}
    -o ${WORK_DIR}/consumer-pkg-config)
run("pkg-config: run" ${WORK_DIR}/consumer-pkg-config)
string(STRIP "${run_output}" run_output)
message(STATUS "${run_output}")
message(STATUS "cmake package test passed")
