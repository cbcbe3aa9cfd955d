/* realip.h: the client's address behind trusted proxies (config "trusted_proxies"). A request
 * whose peer is in the list may name the client in X-Forwarded-For or X-Real-IP; from anyone
 * else those headers are ignored, so a client cannot choose the address it is audited under. */
#ifndef CAPGATE_REALIP_H
#define CAPGATE_REALIP_H
#include <stddef.h>

#include "capgate/httpd.h"
#include "capgate/net.h"

/* Writes the client address of a request from peer_ip into out (outlen bytes; 64 holds any):
 *  - peer_ip itself when no trusted block holds it (or n == 0, or it does not parse);
 *  - else from X-Forwarded-For (every such header, read as one list in arrival order) as nginx's
 *    realip module does with real_ip_recursive on: walking from the right, the first address
 *    that is not itself in a trusted block; when every one is trusted, the leftmost; an element
 *    that is not an address ends the walk at the last good one (the peer when it is the first).
 *    Elements may be "a.b.c.d", "a.b.c.d:port", "v6", "[v6]" or "[v6]:port";
 *  - else, without X-Forwarded-For, X-Real-IP when it holds one address;
 *  - else peer_ip.
 * Returns 1 when a header decided, 0 when the peer's own address stands. */
int realip_client(const struct net_cidr *trusted, size_t n, const char *peer_ip,
                  const struct httpd_header *headers, size_t n_headers, char *out, size_t outlen);

#endif
