/* realip.c: the client address behind trusted proxies (see realip.h). The rightmost rule is the
 * only safe reading of X-Forwarded-For: each proxy appends the address it received the request
 * from, so entries left of the last trusted hop were written by the client and may be anything.
 * No allocation: the headers are walked in place. */
#include "realip.h"

#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static int trusted_addr(const struct net_cidr *trusted, size_t n, const struct net_addr *a) {
    for (size_t i = 0; i < n; i++)
        if (net_cidr_match(&trusted[i], a)) return 1;
    return 0;
}

/* One list element, spaces trimmed: an address, "[v6]", "[v6]:port" or "v4:port". 0/-1. */
static int element_addr(const char *s, size_t len, struct net_addr *a) {
    while (len && (*s == ' ' || *s == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) return -1;
        size_t rest = len - (size_t)(close - s) - 1;
        if (rest && close[1] != ':') return -1;
        return net_parse_addr(s + 1, (size_t)(close - s) - 1, a);
    }
    if (net_parse_addr(s, len, a) == 0) return 0;
    /* v4:port: exactly one colon */
    const char *colon = memchr(s, ':', len);
    if (!colon || memchr(colon + 1, ':', len - (size_t)(colon - s) - 1)) return -1;
    for (const char *p = colon + 1; p < s + len; p++)
        if (*p < '0' || *p > '9') return -1;
    if (colon + 1 == s + len) return -1;
    if (net_parse_addr(s, (size_t)(colon - s), a) != 0 || a->family != AF_INET) return -1;
    return 0;
}

/* The element of X-Forwarded-For that ends before *end in header h (a comma-separated list);
 * moves *end to the element's start (its comma). 1 when one was found, 0 when h has no more. */
static int prev_element(const char *h, size_t *end, const char **start, size_t *len) {
    size_t e = *end;
    while (e > 0 && (h[e - 1] == ' ' || h[e - 1] == '\t' || h[e - 1] == ',')) e--;
    if (e == 0) return 0;
    size_t b = e;
    while (b > 0 && h[b - 1] != ',') b--;
    *start = h + b;
    *len = e - b;
    *end = b;
    return 1;
}

int realip_client(const struct net_cidr *trusted, size_t n, const char *peer_ip,
                  const struct httpd_header *headers, size_t n_headers, char *out, size_t outlen) {
    struct net_addr cur, next;
    int found = 0, any_xff = 0;
    size_t plen = peer_ip ? strlen(peer_ip) : 0;

    if (outlen == 0) return 0;
    if (plen >= outlen) plen = outlen - 1;
    memcpy(out, peer_ip ? peer_ip : "", plen);
    out[plen] = '\0';
    if (!n || !peer_ip || net_parse_addr(peer_ip, strlen(peer_ip), &cur) != 0 ||
        !trusted_addr(trusted, n, &cur))
        return 0;

    /* X-Forwarded-For: the last header holds the newest hops */
    for (size_t i = n_headers; i-- > 0;) {
        if (strcasecmp(headers[i].name, "X-Forwarded-For") != 0) continue;
        const char *h = headers[i].value ? headers[i].value : "";
        size_t end = strlen(h);
        const char *el;
        size_t len;
        any_xff = 1;
        while (prev_element(h, &end, &el, &len)) {
            if (element_addr(el, len, &next) != 0) goto done;
            cur = next;
            found = 1;
            if (!trusted_addr(trusted, n, &cur)) goto done;
        }
    }
    if (!any_xff) {
        for (size_t i = n_headers; i-- > 0;) {
            if (strcasecmp(headers[i].name, "X-Real-IP") != 0) continue;
            const char *h = headers[i].value ? headers[i].value : "";
            if (element_addr(h, strlen(h), &next) == 0) {
                cur = next;
                found = 1;
            }
            break;
        }
    }
done:
    if (found) net_addr_format(&cur, out, outlen);
    return found;
}
