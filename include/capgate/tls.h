/* tls.h: OpenSSL contexts for the listeners (server) and the upstream client. */
#ifndef CAPGATE_TLS_H
#define CAPGATE_TLS_H
#include <stddef.h>
#include <openssl/ssl.h>

/* Idempotent library initialisation; call once before threads start. */
void tls_global_init(void);
/* A server context with the PEM certificate chain and key, TLS 1.2+. NULL and err on failure.
 * Caller frees with SSL_CTX_free(). */
SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                            size_t errlen);
/* A client context, TLS 1.2+. verify != 0: peer verification against ca_file (PEM) or, when
 * ca_file is NULL, the system store. Hostname checks are per connection (tls_client_ssl_new).
 * NULL and err on failure. Caller frees with SSL_CTX_free(). */
SSL_CTX *tls_client_ctx_new(const char *ca_file, int verify, char *err, size_t errlen);
/* A client SSL for one connection to host: SNI set, and with verify the certificate must match
 * host (X509_VERIFY_PARAM_set1_host). NULL on failure. Caller owns it (bufferevent_openssl takes
 * it with BEV_OPT_CLOSE_ON_FREE). */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host, int verify);

#endif
