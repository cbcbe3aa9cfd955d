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

/* An IP address in binary: AF_INET (bytes[0..3]) or AF_INET6 (bytes[0..15]). */
struct net_addr {
    int family;
    unsigned char bytes[16];
};
/* An address block: the first prefix bits of addr (the rest are zero). */
struct net_cidr {
    struct net_addr addr;
    unsigned prefix;
};
/* An IP literal of len bytes (no brackets, port or zone). An IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d) is taken as the IPv4 address, as the listeners report such peers. 0/-1. */
int net_parse_addr(const char *s, size_t len, struct net_addr *out);
/* "a.b.c.d/n" (n 0..32), "v6/n" (n 0..128), or an address alone (all of its bits). Bits past the
 * prefix must be zero ("10.0.0.1/8" is refused: it was probably meant as 10.0.0.0/8 or
 * 10.0.0.1/32). 0, or -1 with err saying what was wrong. */
int net_parse_cidr(const char *s, struct net_cidr *out, char *err, size_t errlen);
/* 1 when a lies in c (the same family and the same first c->prefix bits). */
int net_cidr_match(const struct net_cidr *c, const struct net_addr *a);
/* The text form of a (inet_ntop) into out; "" when it does not fit. */
void net_addr_format(const struct net_addr *a, char *out, size_t outlen);

/* 1 when bytes wait to be read on the socket fd (FIONREAD > 0), else 0 (none, fd < 0, error). */
int net_bytes_waiting(int fd);

#endif
