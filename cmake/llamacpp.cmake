# llama.cpp with the TurboQuant KV-cache types, built from the llama.cpp vendored in the pinned
# llama-cpp-python sdist plus patches/series. Included by the root CMakeLists.txt after
# add_subdirectory(native) (target tq_native).
#
#   TQ_CACHE_DIR          where the sdist is kept (default: $TQ_CACHE_DIR, else ~/.cache/tq-llamacpp,
#                         the folder the package keeps its models in); fetched from the package index
#                         by tq_llamacpp/_registry.py (standard library only: pip's isolated build
#                         environment has no pip) when missing, then checked against its SHA-256
#   TQ_CUDA               also build the CUDA backend (GGML_CUDA=ON) with the tq device code of
#                         native/cuda; CMAKE_CUDA_ARCHITECTURES defaults to 90, GGML_CUDA_FA_QUANTS
#                         to upstream's pairs plus the tq pairs below (TQ_CUDA_FA_QUANTS)
#   TQ_LLAMA_EXTRA_TOOLS  also build and install llama-completion (a cheap CLI)
#   TQ_LLAMA_SOURCE_DIR   build this already-patched llama.cpp tree instead (skips fetch, verify
#                         and patching; benchmarks/gpu_bench.sh carries one to the GPU machine)
#
# The vendored tree is unpacked into the build directory and patched there; it is unpacked
# again only when the sdist changes, and re-patched only when a patch or the series changes
# (stamps under <build>/tq-llama/stamp). Only libllama, libggml* (the RPC backend included),
# llama-perplexity, llama-bench, test-backend-ops and ggml-rpc-server are built by default;
# everything goes into the Python package (tq_llamacpp/lib and tq_llamacpp/bin).
include_guard(GLOBAL)

if(NOT TARGET tq_native)
  message(FATAL_ERROR "cmake/llamacpp.cmake needs the tq_native target: add_subdirectory(native) first")
endif()

get_filename_component(TQ_SOURCE_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
set(TQ_PATCH_DIR "${TQ_SOURCE_ROOT}/patches")
set(TQ_SERIES "${TQ_PATCH_DIR}/series")

if(DEFINED ENV{TQ_CACHE_DIR} AND NOT "$ENV{TQ_CACHE_DIR}" STREQUAL "")
  set(_tq_cache_default "$ENV{TQ_CACHE_DIR}")
elseif(DEFINED ENV{HOME} AND NOT "$ENV{HOME}" STREQUAL "")
  set(_tq_cache_default "$ENV{HOME}/.cache/tq-llamacpp")
else()
  set(_tq_cache_default "${CMAKE_BINARY_DIR}/tq-cache")
endif()
set(TQ_CACHE_DIR "${_tq_cache_default}" CACHE PATH "Where the llama-cpp-python sdist is kept")
option(TQ_CUDA "Build llama.cpp with the CUDA backend (GGML_CUDA)" OFF)
option(TQ_LLAMA_EXTRA_TOOLS "Also build and install llama-completion" OFF)
# upstream's default pairs, then tq2/tq3/tq4 with themselves, q8_0-K and f16-K with each, and
# tq4-K with the smaller tq-V types
set(TQ_CUDA_FA_QUANTS
    "q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16;tq2-tq2;tq3-tq3;tq4-tq4;q8_0-tq2;q8_0-tq3;q8_0-tq4;tq4-tq3;tq4-tq2;f16-tq2;f16-tq3;f16-tq4")

# ---- patches/series: the sdist, its SHA-256 and the patches in order ------------------------
if(NOT EXISTS "${TQ_SERIES}")
  message(FATAL_ERROR "missing ${TQ_SERIES}")
endif()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${TQ_SERIES}")
file(STRINGS "${TQ_SERIES}" _tq_series_lines)
set(TQ_SDIST_NAME "")
set(TQ_SDIST_SHA256 "")
set(TQ_PATCHES "")
foreach(_line IN LISTS _tq_series_lines)
  string(STRIP "${_line}" _line)
  if(_line MATCHES "^#[ \t]*sdist:[ \t]*([^ \t]+)$")
    set(TQ_SDIST_NAME "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^#[ \t]*sha256:[ \t]*([0-9a-fA-F]+)$")
    string(TOLOWER "${CMAKE_MATCH_1}" TQ_SDIST_SHA256)
  elseif(_line STREQUAL "" OR _line MATCHES "^#")
  else()
    if(NOT EXISTS "${TQ_PATCH_DIR}/${_line}")
      message(FATAL_ERROR "patches/series lists ${_line}, which is not in ${TQ_PATCH_DIR}")
    endif()
    list(APPEND TQ_PATCHES "${_line}")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${TQ_PATCH_DIR}/${_line}")
  endif()
endforeach()
if(NOT TQ_SDIST_NAME MATCHES "^llama_cpp_python-([0-9.]+)\\.tar\\.gz$")
  message(FATAL_ERROR "patches/series must name the sdist as '# sdist: llama_cpp_python-<version>.tar.gz'")
endif()
set(TQ_LLAMA_CPP_PYTHON_VERSION "${CMAKE_MATCH_1}")
string(LENGTH "${TQ_SDIST_SHA256}" _len)
if(NOT _len EQUAL 64)
  message(FATAL_ERROR "patches/series must give the sdist's SHA-256 as '# sha256: <64 hex digits>'")
endif()

# ---- an already-patched tree instead of the sdist (TQ_LLAMA_SOURCE_DIR) --------------------
# e.g. a trimmed copy carried to a machine without network access (benchmarks/gpu_bench.sh)
set(TQ_LLAMA_SOURCE_DIR "" CACHE PATH
    "An already-patched llama.cpp tree to build instead of the sdist plus patches/series (no fetch, no patching)")
if(TQ_LLAMA_SOURCE_DIR)
  get_filename_component(TQ_LLAMA_SOURCE_DIR "${TQ_LLAMA_SOURCE_DIR}" ABSOLUTE)
  if(NOT EXISTS "${TQ_LLAMA_SOURCE_DIR}/CMakeLists.txt" OR NOT EXISTS "${TQ_LLAMA_SOURCE_DIR}/ggml/include/ggml.h")
    message(FATAL_ERROR "tq: TQ_LLAMA_SOURCE_DIR=${TQ_LLAMA_SOURCE_DIR} is not a llama.cpp tree")
  endif()
  file(STRINGS "${TQ_LLAMA_SOURCE_DIR}/ggml/include/ggml.h" _tq_patched REGEX "GGML_TYPE_TQ3 ")
  if(NOT _tq_patched)
    message(FATAL_ERROR "tq: TQ_LLAMA_SOURCE_DIR=${TQ_LLAMA_SOURCE_DIR} lacks the tq types: apply patches/series to it first")
  endif()
  message(STATUS "tq: building the patched llama.cpp in ${TQ_LLAMA_SOURCE_DIR} as it is (no fetch, no patching)")
else()
  # ---- the sdist: fetch if missing, verify --------------------------------------------------
  set(TQ_SDIST "${TQ_CACHE_DIR}/${TQ_SDIST_NAME}")
  set(_tq_fetch_args "${TQ_SOURCE_ROOT}/tq_llamacpp/_registry.py"
      "llama-cpp-python==${TQ_LLAMA_CPP_PYTHON_VERSION}" "${TQ_CACHE_DIR}"
      --filename "${TQ_SDIST_NAME}" --sha256 "${TQ_SDIST_SHA256}")
  string(REPLACE ";" " " _tq_fetch_cmd "python ${_tq_fetch_args}")
  if(NOT EXISTS "${TQ_SDIST}")
    if(NOT Python_EXECUTABLE)
      find_package(Python COMPONENTS Interpreter REQUIRED)
    endif()
    message(STATUS "tq: fetching ${TQ_SDIST_NAME} into ${TQ_CACHE_DIR}")
    execute_process(COMMAND "${Python_EXECUTABLE}" ${_tq_fetch_args} RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0 OR NOT EXISTS "${TQ_SDIST}")
      message(FATAL_ERROR "tq: could not fetch ${TQ_SDIST_NAME} (above: why). Fetch it where the "
        "package index is reachable, then configure again with the folder that holds it:\n"
        "  ${_tq_fetch_cmd}\n"
        "  TQ_CACHE_DIR=<that folder> pip install .   (or -DTQ_CACHE_DIR=<that folder>)")
    endif()
  endif()
  file(SHA256 "${TQ_SDIST}" _tq_sha)
  if(NOT _tq_sha STREQUAL TQ_SDIST_SHA256)
    message(FATAL_ERROR "tq: ${TQ_SDIST} has SHA-256 ${_tq_sha}, expected ${TQ_SDIST_SHA256} "
      "(patches/series). The file is damaged or not the pinned release. Delete it and configure "
      "again to fetch it afresh, or fetch it by hand:\n  rm '${TQ_SDIST}'\n  ${_tq_fetch_cmd}")
  endif()

  # ---- unpack vendor/llama.cpp (once per sdist) and apply the series (once per patch set) ----
  set(_tq_base "${CMAKE_BINARY_DIR}/tq-llama")
  set(TQ_LLAMA_SOURCE_DIR "${_tq_base}/llama.cpp")
  set(_tq_stamp_dir "${_tq_base}/stamp")
  set(_tq_member_root "llama_cpp_python-${TQ_LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp")
  file(MAKE_DIRECTORY "${_tq_stamp_dir}")

  # extract members (paths under vendor/llama.cpp, or the whole tree when empty) into DEST/<root>
  function(_tq_extract dest)
    set(_patterns "")
    if(ARGN)
      foreach(_f IN LISTS ARGN)
        list(APPEND _patterns "${_tq_member_root}/${_f}")
      endforeach()
    else()
      set(_patterns "${_tq_member_root}")
    endif()
    file(REMOVE_RECURSE "${dest}")
    file(MAKE_DIRECTORY "${dest}")
    if(CMAKE_VERSION VERSION_GREATER_EQUAL 3.24)
      # TOUCH: files get the current time, so that whatever was built from an older tree rebuilds
      file(ARCHIVE_EXTRACT INPUT "${TQ_SDIST}" DESTINATION "${dest}" PATTERNS ${_patterns} TOUCH)
    else()
      file(ARCHIVE_EXTRACT INPUT "${TQ_SDIST}" DESTINATION "${dest}" PATTERNS ${_patterns})
      file(GLOB_RECURSE _all LIST_DIRECTORIES false "${dest}/*")
      if(_all)
        file(TOUCH_NOCREATE ${_all})
      endif()
    endif()
  endfunction()

  set(_tq_src_stamp "${_tq_stamp_dir}/source.txt")
  set(_tq_patch_stamp "${_tq_stamp_dir}/patches.txt")
  set(_tq_touched "${_tq_stamp_dir}/touched.txt") # the files the applied patch set touches
  set(_tq_have "")
  if(EXISTS "${_tq_src_stamp}")
    file(READ "${_tq_src_stamp}" _tq_have)
  endif()
  if(NOT _tq_have STREQUAL TQ_SDIST_SHA256 OR NOT EXISTS "${TQ_LLAMA_SOURCE_DIR}/CMakeLists.txt")
    message(STATUS "tq: unpacking vendor/llama.cpp from ${TQ_SDIST_NAME}")
    file(REMOVE "${_tq_src_stamp}" "${_tq_patch_stamp}" "${_tq_touched}")
    file(REMOVE_RECURSE "${TQ_LLAMA_SOURCE_DIR}")
    _tq_extract("${_tq_base}/unpack")
    file(RENAME "${_tq_base}/unpack/${_tq_member_root}" "${TQ_LLAMA_SOURCE_DIR}")
    # a submodule link into llama-cpp-python's .git, which the sdist does not carry
    file(REMOVE "${TQ_LLAMA_SOURCE_DIR}/.git")
    file(REMOVE_RECURSE "${_tq_base}/unpack")
    file(WRITE "${_tq_src_stamp}" "${TQ_SDIST_SHA256}")
  endif()

  # the patch set's identity: the sdist, then every patch's name and content, in order
  set(_tq_want "${TQ_SDIST_SHA256}")
  set(_tq_new_files "")
  foreach(_p IN LISTS TQ_PATCHES)
    file(SHA256 "${TQ_PATCH_DIR}/${_p}" _h)
    string(APPEND _tq_want "\n${_p} ${_h}")
    file(STRINGS "${TQ_PATCH_DIR}/${_p}" _plus REGEX "^\\+\\+\\+ ")
    foreach(_l IN LISTS _plus)
      if(_l MATCHES "^\\+\\+\\+ [^/\t ]+/([^\t ]+)")
        list(APPEND _tq_new_files "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  set(_tq_have "")
  if(EXISTS "${_tq_patch_stamp}")
    file(READ "${_tq_patch_stamp}" _tq_have)
  endif()
  if(NOT _tq_have STREQUAL _tq_want)
    # the series is `git format-patch` output: `patch` applies it, and so does `git apply` (where
    # no `patch` is installed; GIT_CEILING_DIRECTORIES keeps it from treating the build folder as
    # part of an enclosing repository, whose root it would apply the paths to)
    find_program(TQ_PATCH_EXECUTABLE patch)
    find_program(TQ_GIT_EXECUTABLE git)
    if(TQ_PATCH_EXECUTABLE)
      set(_tq_apply "${TQ_PATCH_EXECUTABLE}" -p1 --forward --batch --no-backup-if-mismatch --reject-file=- -i)
    elseif(TQ_GIT_EXECUTABLE)
      set(_tq_apply "${CMAKE_COMMAND}" -E env "GIT_CEILING_DIRECTORIES=${_tq_base}" "${TQ_GIT_EXECUTABLE}" apply -p1)
    else()
      message(FATAL_ERROR "tq: 'patch' or 'git' is needed to patch llama.cpp (apt-get install patch)")
    endif()
    # Patch pristine copies of the files the old and the new patch set touch in a staging tree,
    # then copy over only the files whose content changed: the tree is never left half-patched,
    # and an edit to one patch rebuilds only what it changes.
    set(_tq_old_files "")
    if(EXISTS "${_tq_touched}")
      file(STRINGS "${_tq_touched}" _tq_old_files)
    endif()
    set(_tq_all_files ${_tq_old_files} ${_tq_new_files})
    list(REMOVE_DUPLICATES _tq_all_files)
    # which of them the sdist has (the others are created by patches)
    execute_process(COMMAND "${CMAKE_COMMAND}" -E tar tf "${TQ_SDIST}"
                    OUTPUT_VARIABLE _members RESULT_VARIABLE _rc)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "tq: cannot list ${TQ_SDIST}")
    endif()
    string(REPLACE "\n" ";" _members "${_members}")
    set(_tq_pristine_files "")
    foreach(_f IN LISTS _tq_all_files)
      if("${_tq_member_root}/${_f}" IN_LIST _members)
        list(APPEND _tq_pristine_files "${_f}")
      endif()
    endforeach()
    set(_stage "${_tq_base}/stage")
    if(_tq_pristine_files)
      _tq_extract("${_stage}" ${_tq_pristine_files})
    else()
      file(REMOVE_RECURSE "${_stage}")
    endif()
    set(_stage_root "${_stage}/${_tq_member_root}")
    file(MAKE_DIRECTORY "${_stage_root}")
    foreach(_p IN LISTS TQ_PATCHES)
      message(STATUS "tq: applying patches/${_p}")
      execute_process(
        COMMAND ${_tq_apply} "${TQ_PATCH_DIR}/${_p}"
        WORKING_DIRECTORY "${_stage_root}"
        RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
      if(NOT _rc EQUAL 0)
        message(FATAL_ERROR "tq: patches/${_p} does not apply to vendor/llama.cpp of "
          "${TQ_SDIST_NAME}:\n${_out}\nFix or regenerate that patch "
          "(scripts/patches.sh) and configure again.")
      endif()
    endforeach()
    foreach(_f IN LISTS _tq_all_files)
      if(EXISTS "${_stage_root}/${_f}")
        get_filename_component(_d "${TQ_LLAMA_SOURCE_DIR}/${_f}" DIRECTORY)
        file(MAKE_DIRECTORY "${_d}")
        file(COPY_FILE "${_stage_root}/${_f}" "${TQ_LLAMA_SOURCE_DIR}/${_f}" ONLY_IF_DIFFERENT)
      else()
        file(REMOVE "${TQ_LLAMA_SOURCE_DIR}/${_f}") # created by a patch that is gone
      endif()
    endforeach()
    file(REMOVE_RECURSE "${_stage}")
    list(REMOVE_DUPLICATES _tq_new_files)
    list(JOIN _tq_new_files "\n" _txt)
    file(WRITE "${_tq_touched}" "${_txt}\n")
    file(WRITE "${_tq_patch_stamp}" "${_tq_want}")
  endif()
endif()

# ---- the flash-attention vector-kernel instances of every K-V pair with a tq side --------------
# (what upstream's template-instances/generate_cu_files.py writes for its types, here at configure
# time instead of carried in a patch; ggml/cmake/common.cmake picks the pairs GGML_CUDA_FA_QUANTS names)
if(TQ_CUDA)
  set(_tq_fa_types q4_0 q4_1 q5_0 q5_1 q8_0 bf16 f16 tq2 tq3 tq4)
  foreach(_k IN LISTS _tq_fa_types)
    foreach(_v IN LISTS _tq_fa_types)
      if(NOT (_k MATCHES "^tq" OR _v MATCHES "^tq"))
        continue()
      endif()
      string(TOUPPER "${_k}" _K)
      string(TOUPPER "${_v}" _V)
      set(_body "// This file has been autogenerated by tq-llamacpp's cmake/llamacpp.cmake, do not edit manually.\n\n#include \"../fattn-vec.cuh\"\n\n")
      foreach(_d 64 128 256)
        string(LENGTH "${_d}" _n)
        set(_pad "")
        if(_n EQUAL 2)
          set(_pad " ")
        endif()
        string(APPEND _body "DECL_FATTN_VEC_CASE(${_pad}${_d}, GGML_TYPE_${_K}, GGML_TYPE_${_V});\n")
      endforeach()
      file(CONFIGURE OUTPUT "${TQ_LLAMA_SOURCE_DIR}/ggml/src/ggml-cuda/template-instances/fattn-vec-instance-${_k}-${_v}.cu"
           CONTENT "${_body}" @ONLY)
    endforeach()
  endforeach()
endif()

# ---- llama.cpp as a subproject --------------------------------------------------------------
# (in a function, so that these settings stay out of the including project's scope)
function(_tq_add_llama_cpp)
  set(BUILD_SHARED_LIBS ON)
  set(LLAMA_BUILD_COMMON ON)
  set(LLAMA_BUILD_TESTS ON)
  set(LLAMA_BUILD_TOOLS ON)
  set(LLAMA_BUILD_EXAMPLES OFF)
  set(LLAMA_BUILD_SERVER OFF)
  set(LLAMA_BUILD_APP OFF)
  set(LLAMA_BUILD_UI OFF)
  set(LLAMA_OPENSSL OFF)
  set(LLAMA_TOOLS_INSTALL OFF)
  set(LLAMA_TESTS_INSTALL OFF)
  # the RPC backend and its server (ggml-rpc-server), so that a tq cache can live on another host
  set(GGML_RPC ON)
  # the tree has no git history: name the build after the sdist
  set(LLAMA_BUILD_NUMBER 0)
  set(LLAMA_BUILD_COMMIT "llama-cpp-python-${TQ_LLAMA_CPP_PYTHON_VERSION}+tq")
  # a wheel runs on other machines than the one that built it: ggml's x86 baseline (AVX2, FMA,
  # F16C) instead of -march=native, unless GGML_NATIVE is given
  if(DEFINED SKBUILD AND NOT DEFINED GGML_NATIVE)
    set(GGML_NATIVE OFF)
  endif()
  if(TQ_CUDA)
    set(GGML_CUDA ON)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures" FORCE)
    endif()
    # flash-attention vector kernels that read tq codes directly (decode): each K-V pair is one
    # translation unit, so only these are built unless GGML_CUDA_FA_QUANTS is given. Other pairs
    # with a tq side still run, converted to f16 (with a warning).
    # (upstream's default is replaced too: a build folder configured before without TQ_CUDA has it)
    if(NOT DEFINED CACHE{GGML_CUDA_FA_QUANTS} OR "$CACHE{GGML_CUDA_FA_QUANTS}" STREQUAL "q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16")
      set(GGML_CUDA_FA_QUANTS "${TQ_CUDA_FA_QUANTS}" CACHE STRING
          "FlashAttention vector kernels to compile: K-V type pairs (tq-llamacpp default)" FORCE)
    endif()
  endif()
  add_subdirectory("${TQ_LLAMA_SOURCE_DIR}" "${CMAKE_BINARY_DIR}/llama.cpp" EXCLUDE_FROM_ALL)
endfunction()
_tq_add_llama_cpp()

# the codec goes into the two ggml libraries whose type tables point at it
foreach(_t ggml-base ggml-cpu llama)
  if(NOT TARGET ${_t})
    message(FATAL_ERROR "tq: llama.cpp did not define target ${_t}")
  endif()
endforeach()
target_link_libraries(ggml-base PRIVATE tq_native)
target_link_libraries(ggml-cpu PRIVATE tq_native)
# the llama-side algorithms (centring, its calibration) are sources of libllama, which the patches
# call into; llama.cpp's tests read the codec's own numbers for their tolerances
target_sources(llama PRIVATE "${TQ_SOURCE_ROOT}/native/llama/tq-kv-center.cpp"
                             "${TQ_SOURCE_ROOT}/native/llama/tq-kv-calibrate.cpp")
target_include_directories(llama PUBLIC "$<BUILD_INTERFACE:${TQ_SOURCE_ROOT}/native/llama>")
foreach(_t test-backend-ops test-quantize-fns)
  if(TARGET ${_t})
    target_include_directories(${_t} PRIVATE "${TQ_SOURCE_ROOT}/native/include")
  endif()
endforeach()
# ggml-cuda includes the header-only device code (native/cuda, which includes native/include);
# it has no relocatable device code, so nothing is linked
if(TQ_CUDA)
  if(NOT TARGET ggml-cuda)
    message(FATAL_ERROR "tq: llama.cpp did not define target ggml-cuda")
  endif()
  target_include_directories(ggml-cuda PRIVATE "${TQ_SOURCE_ROOT}/native/include" "${TQ_SOURCE_ROOT}/native/cuda")
endif()

# with BUILD_SHARED_LIBS the tools' libraries (llama-common, the *-impl libraries) are shared too
set(TQ_LLAMA_LIBS llama ggml ggml-base ggml-cpu ggml-rpc llama-common llama-perplexity-impl llama-bench-impl)
if(TQ_CUDA)
  list(APPEND TQ_LLAMA_LIBS ggml-cuda)
endif()
set(TQ_LLAMA_BINS llama-perplexity llama-bench test-backend-ops ggml-rpc-server)
if(TQ_LLAMA_EXTRA_TOOLS)
  list(APPEND TQ_LLAMA_LIBS llama-completion-impl)
  list(APPEND TQ_LLAMA_BINS llama-completion)
endif()

# one file per library: a wheel cannot hold the soname symlinks (libggml.so -> libggml.so.0 ->
# libggml.so.0.x.y) and would carry three copies
foreach(_t IN LISTS TQ_LLAMA_LIBS)
  set_property(TARGET ${_t} PROPERTY VERSION)
  set_property(TARGET ${_t} PROPERTY SOVERSION)
endforeach()

# build these (and only these) with the default target
add_custom_target(tq_llama ALL)
add_dependencies(tq_llama ${TQ_LLAMA_LIBS} ${TQ_LLAMA_BINS})

# install into the Python package: tq_llamacpp/lib (RPATH $ORIGIN) and tq_llamacpp/bin
# (RPATH $ORIGIN/../lib)
if(DEFINED SKBUILD_PLATLIB_DIR)
  set(_tq_pkg "${SKBUILD_PLATLIB_DIR}/tq_llamacpp")
else()
  set(_tq_pkg "tq_llamacpp")
endif()
if(APPLE)
  set(_tq_origin "@loader_path")
else()
  set(_tq_origin "$ORIGIN")
endif()
set_target_properties(${TQ_LLAMA_LIBS} PROPERTIES INSTALL_RPATH "${_tq_origin}")
set_target_properties(${TQ_LLAMA_BINS} PROPERTIES INSTALL_RPATH "${_tq_origin}/../lib")
install(TARGETS ${TQ_LLAMA_LIBS}
        LIBRARY DESTINATION "${_tq_pkg}/lib"
        RUNTIME DESTINATION "${_tq_pkg}/lib"
        ARCHIVE DESTINATION "${_tq_pkg}/lib"
        PUBLIC_HEADER DESTINATION "${_tq_pkg}/include" EXCLUDE_FROM_ALL)
install(TARGETS ${TQ_LLAMA_BINS}
        RUNTIME DESTINATION "${_tq_pkg}/bin")
