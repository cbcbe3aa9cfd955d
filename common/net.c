/* net.c: address text shared by the gateway and the mock, so a listener, an upstream URL and a
 * Redis URL accept exactly the same host:port forms. */
#include "capgate/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "capgate/num.h"

int net_split_host_port(const char *s, char *host, size_t hostlen, int *port, int port_required) {
    const char *hstart = s, *hend, *colon;
    uint64_t p = 0;
    size_t hl;
    if (!s || !host || !port) return -1;
    if (s[0] == '[') {
        hend = strchr(s, ']');
        if (!hend || hend == s + 1) return -1;
        hstart = s + 1;
        colon = hend[1] == ':' ? hend + 1 : NULL;
        if (hend[1] && !colon) return -1;
    } else {
        /* A second ':' means an unbracketed IPv6 address, whose port would be ambiguous. */
        colon = strchr(s, ':');
        hend = colon ? colon : s + strlen(s);
        if (colon && strchr(colon + 1, ':')) return -1;
        if (hend == s) return -1;
    }
    if (colon) {
        if (num_parse_range(colon + 1, strlen(colon + 1), 0, 65535, &p) != 0) return -1;
    } else if (port_required) {
        return -1;
    }
    hl = (size_t)(hend - hstart);
    if (hl >= hostlen) return -1;
    memcpy(host, hstart, hl);
    host[hl] = '\0';
    *port = colon ? (int)p : -1;
    return 0;
}

int net_is_ip_literal(const char *s) {
    unsigned char addr[sizeof(struct in6_addr)];
    if (!s) return 0;
    return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}
