/*
 * tl_port.h - the port picker for the servers that tests, benches and
 * tools start on loopback (tools/lib). Its Python twin, for the Python
 * tests, the benches' shell scripts and scripts/demo-*, is
 * tools/lib/ports.py: the same rule, change both together.
 */
#ifndef TL_PORT_H
#define TL_PORT_H

/* A TCP port that was bindable on 127.0.0.1 a moment ago, or -1 (no
 * socket, or none found in 1000 tries). Chosen at random below the
 * kernel's ephemeral range (10000 up to the low end of
 * /proc/sys/net/ipv4/ip_local_port_range, 32768 if unreadable; the
 * kernel's pick by a bind to port 0 if that leaves fewer than 1024),
 * never one of the last 256 this process was given, and never one any
 * process of this user picked in the last 120 s (picks are shared, under
 * flock(2), in ${TMPDIR:-/tmp}/agentbus-ports-UID: "PORT UNIX_SECONDS"
 * lines, the last 1024). A process that picks without this rule may still
 * take it before the caller binds: callers that start a server on it
 * retry or fail cleanly. Not thread-safe (static state): call it from one
 * thread. */
int tl_free_port(void);

#endif
