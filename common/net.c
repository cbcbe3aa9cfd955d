/* net.c: address text shared by the gateway and the mock, so a listener, an upstream URL and a
 * Redis URL accept exactly the same host:port forms. */
#include "capgate/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/ioctl.h>
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

int net_parse_addr(const char *s, size_t len, struct net_addr *out) {
    char buf[INET6_ADDRSTRLEN + 1];
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!s || len == 0 || len >= sizeof buf || memchr(s, '\0', len)) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, out->bytes) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, out->bytes) != 1) return -1;
    out->family = AF_INET6;
    if (memcmp(out->bytes, mapped, sizeof mapped) == 0) {
        memmove(out->bytes, out->bytes + 12, 4);
        memset(out->bytes + 4, 0, 12);
        out->family = AF_INET;
    }
    return 0;
}

int net_parse_cidr(const char *s, struct net_cidr *out, char *err, size_t errlen) {
    const char *slash = s ? strchr(s, '/') : NULL;
    size_t alen = slash ? (size_t)(slash - s) : (s ? strlen(s) : 0);
    unsigned char addr[16];
    unsigned max;
    uint64_t prefix;
    /* parsed without the IPv4-mapped folding of net_parse_addr: a block is taken as written */
    char buf[INET6_ADDRSTRLEN + 1];
    if (!s || alen == 0 || alen >= sizeof buf) goto bad;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, buf, addr) == 1) {
        out->addr.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, addr) == 1) {
        out->addr.family = AF_INET6;
        max = 128;
    } else {
        goto bad;
    }
    memcpy(out->addr.bytes, addr, max / 8);
    prefix = max;
    if (slash && num_parse_range(slash + 1, strlen(slash + 1), 0, max, &prefix) != 0) {
        snprintf(err, errlen, "the prefix length of %.64s must be 0..%u", s, max);
        return -1;
    }
    out->prefix = (unsigned)prefix;
    for (unsigned bit = out->prefix; bit < max; bit++) {
        if (out->addr.bytes[bit / 8] & (0x80u >> (bit % 8))) {
            snprintf(err, errlen, "%.64s has bits set past its /%u prefix", s, out->prefix);
            return -1;
        }
    }
    return 0;
bad:
    snprintf(err, errlen, "must be an IPv4 or IPv6 address, optionally with /prefix; got %.64s",
             s ? s : "null");
    return -1;
}

int net_cidr_match(const struct net_cidr *c, const struct net_addr *a) {
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (c->addr.family != a->family) return 0;
    if (memcmp(c->addr.bytes, a->bytes, full) != 0) return 0;
    if (!rest) return 1;
    unsigned mask = (0xffu << (8 - rest)) & 0xffu;
    return (c->addr.bytes[full] & mask) == (a->bytes[full] & mask);
}

void net_addr_format(const struct net_addr *a, char *out, size_t outlen) {
    if (!outlen) return;
    if (!inet_ntop(a->family, a->bytes, out, (socklen_t)outlen)) out[0] = '\0';
}

int net_bytes_waiting(int fd) {
    int n = 0;
    return fd >= 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}
