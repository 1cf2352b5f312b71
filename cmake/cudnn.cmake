# cuDNN fused attention (cpp/src/ops/cuda/attention_cudnn.cpp), built in a CUDA build when
# cudnn_frontend's headers (PyPI: nvidia-cudnn-frontend, or CUDNN_FRONTEND_INCLUDE_DIR) and
# cuDNN's own headers are found (MAMBATRON_CUDNN=AUTO, the default; ON requires them, OFF
# leaves the engine out). libcudnn is opened at run time, never linked: the package loads
# without it.
# Where the build finds libcudnn (e.g. PyTorch's nvidia-cudnn wheel) is recorded as the
# place to open it from when the plain soname does not resolve.
set(MAMBATRON_WITH_CUDNN OFF)
if(MAMBATRON_CUDNN STREQUAL "OFF")
  return()
endif()

find_package(Python COMPONENTS Interpreter QUIET)
set(mt_sites "")
if(Python_EXECUTABLE)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import site, sysconfig; p = [sysconfig.get_paths()[k] for k in ('purelib', 'platlib')] + site.getsitepackages(); print(';'.join(dict.fromkeys(p)))"
    OUTPUT_VARIABLE mt_sites OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
set(mt_fe_hints "")
set(mt_cudnn_hints "")
set(mt_cudnn_lib_hints "")
# NVIDIA's wheels for CUDA 13 and later share nvidia/cuNN/; older ones have nvidia/cudnn/.
foreach(site IN LISTS mt_sites)
  list(APPEND mt_fe_hints ${site}/include)
  list(APPEND mt_cudnn_hints ${site}/nvidia/cu${CUDAToolkit_VERSION_MAJOR}/include ${site}/nvidia/cudnn/include)
  list(APPEND mt_cudnn_lib_hints ${site}/nvidia/cu${CUDAToolkit_VERSION_MAJOR}/lib ${site}/nvidia/cudnn/lib)
endforeach()

find_path(CUDNN_FRONTEND_INCLUDE_DIR cudnn_frontend.h HINTS ENV CUDNN_FRONTEND_INCLUDE_DIR ${mt_fe_hints})
find_path(CUDNN_INCLUDE_DIR cudnn_graph.h HINTS ENV CUDNN_INCLUDE_DIR ${CUDAToolkit_INCLUDE_DIRS} ${mt_cudnn_hints})
find_library(CUDNN_LIBRARY NAMES libcudnn.so.9 cudnn HINTS ENV CUDNN_LIBRARY_DIR ${CUDAToolkit_LIBRARY_DIR}
             ${CUDAToolkit_LIBRARY_ROOT}/lib ${CUDAToolkit_LIBRARY_ROOT}/lib64
             ${mt_cudnn_lib_hints})

if(CUDNN_FRONTEND_INCLUDE_DIR AND CUDNN_INCLUDE_DIR)
  set(MAMBATRON_WITH_CUDNN ON)
  set(mt_defs MAMBATRON_WITH_CUDNN)
  if(CUDNN_LIBRARY)
    list(APPEND mt_defs "MAMBATRON_CUDNN_LIBRARY=\"${CUDNN_LIBRARY}\"")
  endif()
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/cpp/src/ops/cuda/attention_cudnn.cpp PROPERTIES
    COMPILE_DEFINITIONS "${mt_defs}"
    # cudnn_frontend's inline code stays private to this package: without these, its
    # function-local statics are process-wide (STB_GNU_UNIQUE) and collide with the copy
    # of cudnn_frontend inside PyTorch when both are loaded.
    COMPILE_OPTIONS "-isystem;${CUDNN_FRONTEND_INCLUDE_DIR};-isystem;${CUDNN_INCLUDE_DIR};-fno-gnu-unique;-fvisibility=hidden;-fvisibility-inlines-hidden")
  message(STATUS "mambatron: cuDNN attention ON (cudnn_frontend ${CUDNN_FRONTEND_INCLUDE_DIR}, "
                 "cuDNN headers ${CUDNN_INCLUDE_DIR}, library ${CUDNN_LIBRARY})")
elseif(MAMBATRON_CUDNN STREQUAL "ON")
  message(FATAL_ERROR "MAMBATRON_CUDNN=ON but cudnn_frontend.h (${CUDNN_FRONTEND_INCLUDE_DIR}) or cudnn_graph.h "
                      "(${CUDNN_INCLUDE_DIR}) was not found: pip install nvidia-cudnn-frontend, or set "
                      "CUDNN_FRONTEND_INCLUDE_DIR / CUDNN_INCLUDE_DIR")
else()
  message(STATUS "mambatron: cuDNN attention OFF (no cudnn_frontend.h or cudnn_graph.h found; "
                 "pip install nvidia-cudnn-frontend to build it)")
endif()
