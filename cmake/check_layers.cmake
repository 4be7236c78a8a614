# The layering check: every #include "..." of the project's own code must point at the file's own
# layer or a layer below it. Run as a test: cmake -DROOT=<source dir> -P cmake/check_layers.cmake
# Fails (exit code 1) listing each offending file, line and include.
#
# Layers, by folder (the longest matching prefix decides); each lists what it may include:
#   common             common
#   common/core        common, common/core
#   common/scenario    common, common/core, common/scenario
#   sim                common, common/core, common/scenario, sim
#   runtime/model      common, runtime/model
#   runtime            common, common/core, runtime, runtime/model   (the swap engine, runtime/cuda)
#   runtime/server     common, common/core, common/scenario, runtime, runtime/model, runtime/server (HTTP serving)
#   runtime/cli        common, common/core, common/scenario, runtime, runtime/model, runtime/server, runtime/cli
#   app                common, common/core, common/scenario, sim    (the runtime is a loaded module)
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED ROOT)
  message(FATAL_ERROR "usage: cmake -DROOT=<source dir> -P check_layers.cmake")
endif()

set(layers common/scenario common/core common runtime/model runtime/server runtime/cli runtime sim app)
set(allowed_common "common")
set(allowed_common/core "common;common/core")
set(allowed_common/scenario "common;common/core;common/scenario")
set(allowed_sim "common;common/core;common/scenario;sim")
set(allowed_runtime/model "common;runtime/model")
set(allowed_runtime "common;common/core;runtime;runtime/model")
set(allowed_runtime/server "common;common/core;common/scenario;runtime;runtime/model;runtime/server")
set(allowed_runtime/cli "common;common/core;common/scenario;runtime;runtime/model;runtime/server;runtime/cli")
set(allowed_app "common;common/core;common/scenario;sim")

# The layer of a path relative to ROOT (the longest listed folder that contains it), or "".
function(layer_of path out)
  set(best "")
  foreach(layer IN LISTS layers)
    string(LENGTH "${layer}" len)
    string(SUBSTRING "${path}" 0 ${len} head)
    if(head STREQUAL layer)
      string(SUBSTRING "${path}" ${len} 1 next)
      if(next STREQUAL "/")
        string(LENGTH "${best}" best_len)
        if(len GREATER best_len)
          set(best "${layer}")
        endif()
      endif()
    endif()
  endforeach()
  set(${out} "${best}" PARENT_SCOPE)
endfunction()

file(GLOB_RECURSE sources RELATIVE "${ROOT}"
     "${ROOT}/common/*" "${ROOT}/sim/*" "${ROOT}/runtime/*" "${ROOT}/app/*")
list(FILTER sources INCLUDE REGEX "\\.(h|hpp|cpp|cu|cuh)$")
set(violations 0)
set(checked 0)
foreach(src IN LISTS sources)
  layer_of("${src}" src_layer)
  if(src_layer STREQUAL "")
    continue()
  endif()
  math(EXPR checked "${checked} + 1")
  file(STRINGS "${ROOT}/${src}" lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([^\"]+)\".*$" "\\1" inc "${line}")
    layer_of("${inc}" inc_layer)
    if(inc_layer STREQUAL "")
      continue()  # not the project's own folders (a file beside it, a third-party header)
    endif()
    if(NOT inc_layer IN_LIST allowed_${src_layer})
      message("layering: ${src} (layer ${src_layer}) includes \"${inc}\" (layer ${inc_layer})")
      math(EXPR violations "${violations} + 1")
    endif()
  endforeach()
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "layering: no source files under ${ROOT}")
endif()
if(violations GREATER 0)
  message(FATAL_ERROR "layering: ${violations} include(s) point at a higher layer")
endif()
message(STATUS "layering: ${checked} files checked, every include points at its own layer or below")
