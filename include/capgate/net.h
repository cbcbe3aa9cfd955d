/* net.h: address text both programs parse: "host:port" listeners and URL authorities, and the
 * test for an IP literal (TLS name checks, DNS skipping, the userIp rule). */
#ifndef CAPGATE_NET_H
#define CAPGATE_NET_H
#include <stddef.h>

/* Longest host net_split_host_port returns, NUL included (a DNS name is at most 253 bytes). */
#define NET_HOST_MAX 256

/* "host:port", "[v6]:port", or with port_required == 0 also "host" / "[v6]" alone. The host is
 * copied without brackets into host (hostlen bytes, NUL-terminated); an unbracketed host must not
 * hold ':' (write IPv6 as [v6]). *port is 0..65535, or -1 when absent. 0, or -1 on bad text or a
 * host longer than hostlen - 1; host and *port are untouched on failure. */
int net_split_host_port(const char *s, char *host, size_t hostlen, int *port, int port_required);
/* 1 when s is an IPv4 or IPv6 address in its usual text form (no brackets, port or zone). */
int net_is_ip_literal(const char *s);

#endif
