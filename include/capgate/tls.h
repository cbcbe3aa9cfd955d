/* tls.h: OpenSSL contexts for the listeners (server) and the upstream client. */
#ifndef CAPGATE_TLS_H
#define CAPGATE_TLS_H
#include <stddef.h>
#include <openssl/ssl.h>

/* Idempotent library initialisation; call once before threads start. */
void tls_global_init(void);
/* A server context with the PEM certificate chain and key, TLS 1.2+; ALPN answers http/1.1
 * when the client offers it. NULL and err on failure. Caller frees with SSL_CTX_free(). */
SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* What a TLS listener holds: a server context that can be replaced while listeners on any thread
 * use it (a certificate reload). A connection takes its SSL from the context current at accept
 * and keeps it (SSL_new holds a reference), so a swap touches only later handshakes. */
struct tls_server;
/* From the PEM files (tls_server_ctx_new). NULL and err on failure. */
struct tls_server *tls_server_new(const char *cert_file, const char *key_file, char *err,
                                  size_t errlen);
/* Takes over the caller's reference to ctx (tests that set callbacks of their own). NULL on
 * OOM, ctx then freed. */
struct tls_server *tls_server_wrap(SSL_CTX *ctx);
/* Loads the files into a new context and makes it current. 0, or -1 with err, the current
 * context unchanged. Any thread. */
int tls_server_reload(struct tls_server *ts, const char *cert_file, const char *key_file, char *err,
                      size_t errlen);
/* An SSL of the current context for one accepted connection; NULL on OOM. Any thread. */
SSL *tls_server_ssl_new(struct tls_server *ts);
/* Connections already made keep their SSL. NULL accepted. */
void tls_server_free(struct tls_server *ts);
/* A client context, TLS 1.2+. verify != 0: peer verification against ca_file (PEM) or, when
 * ca_file is NULL, the system store. Hostname checks are per connection (tls_client_ssl_new).
 * NULL and err on failure. Caller frees with SSL_CTX_free(). */
SSL_CTX *tls_client_ctx_new(const char *ca_file, int verify, char *err, size_t errlen);
/* A client SSL for one connection to host: SNI set, and with verify the certificate must match
 * host (X509_VERIFY_PARAM_set1_host). NULL on failure. Caller owns it (bufferevent_openssl takes
 * it with BEV_OPT_CLOSE_ON_FREE). */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host, int verify);

#endif
