# install.cmake: the files under /etc and the systemd units, placed at install time (not at
# configure time) so they follow the prefix actually installed to: `cmake --install --prefix`,
# cpack's staging tree, or DESTDIR. Like GNUInstallDirs, the prefix /usr puts configuration in
# /etc; any other prefix in PREFIX/etc. An existing capgate.json is never overwritten.
# Inputs (set by the install(CODE) that includes this file): CAPGATE_SRC, CAPGATE_BIN.
set(prefix "${CMAKE_INSTALL_PREFIX}")
if(prefix STREQUAL "/usr")
  set(sysconfdir "/etc")
  set(unitdir "/lib/systemd/system")
  set(localstatedir "/var")
else()
  set(sysconfdir "${prefix}/etc")
  set(unitdir "${prefix}/lib/systemd/system")
  set(localstatedir "${prefix}/var")
endif()
# file(INSTALL) adds $ENV{DESTDIR} itself; the existence check and the directory need it added.
# cpack installs with DESTDIR set to its staging tree (CPACK_SET_DESTDIR in CMakeLists.txt).
set(root "$ENV{DESTDIR}")

set(CAPGATE_BINDIR "${prefix}/bin")
set(CAPGATE_SYSCONFDIR "${sysconfdir}")
foreach(unit capgate capgate-mock)
  configure_file("${CAPGATE_SRC}/packaging/${unit}.service.in"
                 "${CAPGATE_BIN}/packaging/${unit}.service" @ONLY)
  file(INSTALL "${CAPGATE_BIN}/packaging/${unit}.service"
       DESTINATION "${unitdir}" FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endforeach()
file(INSTALL "${CAPGATE_SRC}/packaging/capgate.logrotate" DESTINATION "${sysconfdir}/logrotate.d"
     RENAME capgate)

set(conf "${root}${sysconfdir}/capgate/capgate.json")
if(EXISTS "${conf}")
  message(STATUS "Kept (not overwritten): ${conf}")
else()
  file(INSTALL "${CAPGATE_SRC}/packaging/capgate.json" DESTINATION "${sysconfdir}/capgate"
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endif()
# Where the unit's LoadCredential= lines read the secrets from (root only).
file(MAKE_DIRECTORY "${root}${sysconfdir}/capgate/credentials")
execute_process(COMMAND chmod 0700 "${root}${sysconfdir}/capgate/credentials")
