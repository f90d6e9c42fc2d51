# Removes what `cmake --install` put in place, as install_manifest.txt lists
# it, but keeps a config file the operator edited (docs/operations.md). Run
# by the `uninstall` target: `sudo cmake --build build-release --target
# uninstall`.
#   cmake -DMANIFEST=FILE -DSYSCONF_DIR=DIR -P uninstall.cmake
# A file under SYSCONF_DIR (its name not ending in .dist) is a config file:
# removed only when it is the same as NAME.dist beside it, the shipped file
# installed with it; otherwise kept, and said. `xargs rm` on the manifest
# deleted an edited broker.conf with the rest.
# The manifest's paths do not hold DESTDIR: give the same DESTDIR as the
# install had, if any.
if(NOT EXISTS "${MANIFEST}")
  message(FATAL_ERROR "no ${MANIFEST}: nothing was installed from this build directory")
endif()
file(STRINGS "${MANIFEST}" files)
set(configs)
set(others)
foreach(f ${files})
  get_filename_component(dir "${f}" DIRECTORY)
  if(NOT "${f}" MATCHES "\\.dist$" AND "${dir}" STREQUAL "${SYSCONF_DIR}")
    list(APPEND configs "$ENV{DESTDIR}${f}")
  else()
    list(APPEND others "$ENV{DESTDIR}${f}")
  endif()
endforeach()
# Config files first: each is compared with its .dist before that goes.
foreach(f ${configs})
  if(NOT EXISTS "${f}")
    continue()
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files "${f}" "${f}.dist"
    RESULT_VARIABLE differs OUTPUT_QUIET ERROR_QUIET)
  if(differs)
    message(STATUS "Keeping: ${f} (edited: differs from ${f}.dist, the file installed)")
  else()
    message(STATUS "Removing: ${f}")
    file(REMOVE "${f}")
  endif()
endforeach()
foreach(f ${others})
  if(EXISTS "${f}" OR IS_SYMLINK "${f}")
    message(STATUS "Removing: ${f}")
    file(REMOVE "${f}")
  endif()
endforeach()
