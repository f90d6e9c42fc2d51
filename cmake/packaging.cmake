# Files for running agentbus as a service (docs/operations.md): systemd units,
# the broker's config file, man pages, bash completion. Included from the
# top-level CMakeLists.txt after the programs are defined.
#
# Paths are fixed at configure time: the units name the programs and the
# config file by absolute path, so stage an install with DESTDIR, not with
# `cmake --install --prefix`. CMAKE_INSTALL_PREFIX=/usr puts the config in
# /etc (GNUInstallDirs); the default /usr/local puts it in /usr/local/etc.

set(AB_BIN_DIR ${CMAKE_INSTALL_FULL_BINDIR})
set(AB_SYSCONF_DIR ${CMAKE_INSTALL_FULL_SYSCONFDIR}/agentbus)
set(AB_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "where systemd units are installed (relative: under the prefix)")

# --- systemd units ----------------------------------------------------------
set(AB_UNITS agentbus-broker.service agentbus-worker@.service)
foreach(u ${AB_UNITS})
  configure_file(etc/systemd/${u}.in ${CMAKE_CURRENT_BINARY_DIR}/systemd/${u} @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/systemd/${u} DESTINATION ${AB_SYSTEMD_UNIT_DIR})
endforeach()

# --- broker config ----------------------------------------------------------
# An operator's edited broker.conf is kept on re-install; the shipped one is
# always there as broker.conf.dist to compare with.
set(AB_CONF_SRC ${CMAKE_CURRENT_SOURCE_DIR}/etc/agentbus/broker.conf)
install(FILES ${AB_CONF_SRC} DESTINATION ${AB_SYSCONF_DIR} RENAME broker.conf.dist)
install(CODE "
  if(EXISTS \"\$ENV{DESTDIR}${AB_SYSCONF_DIR}/broker.conf\")
    message(STATUS \"Keeping: \$ENV{DESTDIR}${AB_SYSCONF_DIR}/broker.conf\")
  else()
    file(INSTALL DESTINATION \"${AB_SYSCONF_DIR}\" TYPE FILE FILES \"${AB_CONF_SRC}\")
  endif()")

# --- bash completion --------------------------------------------------------
install(FILES etc/bash-completion/brokerctl
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)

# --- man pages --------------------------------------------------------------
# Generated from each program's --help and --version, so they never disagree
# with it. Without help2man (scripts/setup installs it) there are none, and
# the man_pages test fails.
set(AB_MAN_DIR ${CMAKE_CURRENT_BINARY_DIR}/man)
set(AB_MAN_PROGRAMS agentbus-broker agentbus-worker agentbus-gateway brokerctl ollama-sim
  agentbus-load agentbus-infer-load)
set(AB_MAN_NAME_agentbus-broker "message broker for multi-agent AI systems")
set(AB_MAN_NAME_agentbus-worker "serve an agentbus service (echo or Ollama backend)")
set(AB_MAN_NAME_agentbus-gateway "Ollama and OpenAI HTTP APIs over an agentbus broker")
set(AB_MAN_NAME_brokerctl "inspect and use an agentbus broker")
set(AB_MAN_NAME_ollama-sim "simulator of the Ollama HTTP API for tests and benchmarks")
set(AB_MAN_NAME_agentbus-load "demo load: agents sending requests through an agentbus broker")
set(AB_MAN_NAME_agentbus-infer-load "agents calling an inference service through agentbus")
find_program(HELP2MAN help2man)
if(HELP2MAN)
  file(MAKE_DIRECTORY ${AB_MAN_DIR})
  set(_pages)
  # Sections --help does not give: files and environment (etc/man/*.h2m.in,
  # with the configured paths), and the related pages.
  foreach(p ${AB_MAN_PROGRAMS})
    set(_inc --include=${CMAKE_CURRENT_SOURCE_DIR}/etc/man/see-also.h2m)
    set(_deps ${p} ${CMAKE_CURRENT_SOURCE_DIR}/etc/man/see-also.h2m)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/etc/man/${p}.h2m.in)
      configure_file(etc/man/${p}.h2m.in ${AB_MAN_DIR}/${p}.h2m @ONLY)
      list(APPEND _inc --include=${AB_MAN_DIR}/${p}.h2m)
      list(APPEND _deps ${AB_MAN_DIR}/${p}.h2m)
    endif()
    add_custom_command(OUTPUT ${AB_MAN_DIR}/${p}.1
      COMMAND ${CMAKE_COMMAND} -E env LC_ALL=C ${HELP2MAN} --no-info --section=1
              --name=${AB_MAN_NAME_${p}} ${_inc} --output=${AB_MAN_DIR}/${p}.1
              $<TARGET_FILE:${p}>
      DEPENDS ${_deps} VERBATIM COMMENT "help2man ${p}")
    list(APPEND _pages ${AB_MAN_DIR}/${p}.1)
  endforeach()
  add_custom_target(man ALL DEPENDS ${_pages})
  install(FILES ${_pages} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
else()
  message(WARNING "help2man not found: no man pages (scripts/setup installs it)")
endif()

# --- uninstall --------------------------------------------------------------
# What install_manifest.txt lists, except a config file that differs from
# the one installed (cmake/uninstall.cmake).
add_custom_target(uninstall
  COMMAND ${CMAKE_COMMAND} -DMANIFEST=${CMAKE_CURRENT_BINARY_DIR}/install_manifest.txt
          -DSYSCONF_DIR=${AB_SYSCONF_DIR} -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/uninstall.cmake
  VERBATIM COMMENT "uninstall (an edited config file is kept)")
