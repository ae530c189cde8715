# Compile settings for the project's own targets (tests, examples, benchmarks).
# Nothing here reaches users of the bilevel::bilevel target.

# bilevel_own_target(<target> [NATIVE]): warnings as errors, -O3 in Release, optional
# -march=native and sanitizers.
function(bilevel_own_target target)
  cmake_parse_arguments(ARG "NATIVE" "" "" ${ARGN})
  target_link_libraries(${target} PRIVATE bilevel::bilevel)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror
                         $<$<CONFIG:Release>:-O3>)
  # Eigen packs GEMM operands in buffers it takes from the stack up to this size and from the
  # heap above it; 128 KiB (its default) is smaller than the packing buffers of a 784-wide
  # layer, so training steps would allocate. 2 MiB keeps them on the stack (issue: performance;
  # tests/allocations). Every translation unit of a program must agree on it.
  target_compile_definitions(${target} PRIVATE EIGEN_STACK_ALLOCATION_LIMIT=2097152)
  if(ARG_NATIVE AND BILEVEL_NATIVE)
    # GCC 12 reports false -W(maybe-)uninitialized inside its own AVX-512 headers.
    target_compile_options(${target} PRIVATE -march=native -Wno-maybe-uninitialized
                           -Wno-uninitialized)
  endif()
  if(BILEVEL_SANITIZE)
    # Sanitizer instrumentation makes GCC 12 report false -Wmaybe-uninitialized inside
    # libstdc++ (std::regex, pulled in by Catch2).
    # UBSan's null and alignment checks, on every reference and member access of Eigen's
    # templates, cost 30% of this build's compile time (tests/methods_bp.cpp: 64 s -> 45 s) and
    # little coverage: a null dereference faults and ASan reports it with its stack, Eigen's
    # packet loads fault on misaligned memory, and the file readers, where a misaligned cast
    # could hide, are fuzzed with every UBSan check (fuzz/CMakeLists.txt).
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
                           -fno-sanitize=null,alignment -fno-sanitize-recover=all
                           -Wno-maybe-uninitialized)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()
