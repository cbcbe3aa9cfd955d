/* tls.c: OpenSSL contexts for the listeners (server side) and for the upstream client, with
 * TLS 1.2 as the floor and per-connection hostname (or IP) verification on the client side. */
#include "capgate/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "capgate/net.h"

/* Appends OpenSSL's most recent queued error to what, so a bad PEM file says why. */
static void tls_set_err(char *err, size_t errlen, const char *what, const char *file) {
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    if (!err || errlen == 0) return;
    if (file)
        snprintf(err, errlen, "%s %s: %s", what, file, reason[0] ? reason : "unknown error");
    else
        snprintf(err, errlen, "%s: %s", what, reason[0] ? reason : "unknown error");
}

void tls_global_init(void) {
    /* OPENSSL_init_ssl is itself run-once and thread-safe; calling it early just makes sure no
     * worker thread races the lazy initialisation. */
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
}

/* ALPN: both programs speak HTTP/1.1 only. A client offering it gets it; one offering only
 * other protocols (h2) gets no ALPN answer and may go on with HTTP/1.1 or give up, as RFC 7301
 * allows, rather than a fatal alert. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                           const unsigned char *in, unsigned inlen, void *arg) {
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    unsigned char sel_len = 0;
    if (SSL_select_next_proto(&sel, &sel_len, http11, sizeof http11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    *outlen = sel_len;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen) {
    SSL_CTX *ctx = NULL;
    if (!cert_file || !key_file) {
        snprintf(err, errlen, "a TLS listener needs both a certificate and a key file");
        goto fail;
    }
    /* OpenSSL says only "system lib" for a file it cannot open */
    for (int i = 0; i < 2; i++) {
        const char *file = i ? key_file : cert_file;
        FILE *f = fopen(file, "r");
        if (!f) {
            snprintf(err, errlen, "cannot open %s: %s", file, strerror(errno));
            goto fail;
        }
        fclose(f);
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls_set_err(err, errlen, "cannot create a TLS server context", NULL);
        goto fail;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        tls_set_err(err, errlen, "cannot require TLS 1.2", NULL);
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Partial writes and a moving write buffer are what bufferevent_openssl expects. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        tls_set_err(err, errlen, "cannot load the certificate chain", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        tls_set_err(err, errlen, "cannot load the private key", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_set_err(err, errlen, "the private key does not match the certificate", key_file);
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

struct tls_server {
    pthread_mutex_t lock; /* held only to read or swap ctx: the workers accept, main reloads */
    SSL_CTX *ctx;
};

struct tls_server *tls_server_wrap(SSL_CTX *ctx) {
    struct tls_server *ts = calloc(1, sizeof *ts);
    if (!ts || pthread_mutex_init(&ts->lock, NULL) != 0) {
        free(ts);
        SSL_CTX_free(ctx);
        return NULL;
    }
    ts->ctx = ctx;
    return ts;
}

struct tls_server *tls_server_new(const char *cert_file, const char *key_file, char *err,
                                  size_t errlen) {
    SSL_CTX *ctx = tls_server_ctx_new(cert_file, key_file, err, errlen);
    struct tls_server *ts;
    if (!ctx) return NULL;
    if (!(ts = tls_server_wrap(ctx))) snprintf(err, errlen, "out of memory");
    return ts;
}

int tls_server_reload(struct tls_server *ts, const char *cert_file, const char *key_file, char *err,
                      size_t errlen) {
    SSL_CTX *fresh = tls_server_ctx_new(cert_file, key_file, err, errlen), *old;
    if (!fresh) return -1;
    pthread_mutex_lock(&ts->lock);
    old = ts->ctx;
    ts->ctx = fresh;
    pthread_mutex_unlock(&ts->lock);
    /* Connections made on the old context hold references of their own. */
    SSL_CTX_free(old);
    return 0;
}

SSL *tls_server_ssl_new(struct tls_server *ts) {
    SSL *ssl;
    pthread_mutex_lock(&ts->lock);
    ssl = SSL_new(ts->ctx);
    pthread_mutex_unlock(&ts->lock);
    return ssl;
}

void tls_server_free(struct tls_server *ts) {
    if (!ts) return;
    SSL_CTX_free(ts->ctx);
    pthread_mutex_destroy(&ts->lock);
    free(ts);
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, int verify, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_set_err(err, errlen, "cannot create a TLS client context", NULL);
        goto fail;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
        tls_set_err(err, errlen, "cannot require TLS 1.2", NULL);
        goto fail;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* No SSL_MODE_RELEASE_BUFFERS here (the listeners keep it, for many idle clients): the
     * upstream's few connections each carry a request and a reply every few milliseconds, and
     * it freed and allocated again the read and the write record buffers (about 17 KB each)
     * for every request. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (verify) {
        if (ca_file) {
            if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
                tls_set_err(err, errlen, "cannot load the CA file", ca_file);
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            tls_set_err(err, errlen, "cannot load the system CA store", NULL);
            goto fail;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* An IP literal ("127.0.0.1", "::1", or "[::1]" as written in URLs) is checked against the
 * certificate's IP SANs and is never sent as SNI (RFC 6066 forbids literal addresses there). */
static int tls_is_ip_literal(const char *host, char *ip, size_t iplen) {
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
    }
    if (n == 0 || n >= iplen) return 0;
    memcpy(ip, host, n);
    ip[n] = '\0';
    return net_is_ip_literal(ip);
}

SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host, int verify) {
    SSL *ssl = SSL_new(ctx);
    char ip[INET6_ADDRSTRLEN + 2];
    if (!ssl || !host) goto fail;
    if (tls_is_ip_literal(host, ip, sizeof ip)) {
        if (verify) {
            X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
            if (X509_VERIFY_PARAM_set1_ip_asc(param, ip) != 1) goto fail;
        }
    } else {
        if (SSL_set_tlsext_host_name(ssl, host) != 1) goto fail;
        if (verify && SSL_set1_host(ssl, host) != 1) goto fail;
    }
    if (verify) SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}
