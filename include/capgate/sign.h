/* sign.h: API 2.0 request signing. The string to sign is METHOD + host + path + "?" + every
 * parameter except Signature, sorted by name as sent (byte order), joined name=value with "&",
 * values raw (decoded); a '_' in a name past position 0 is written '.'. With POST, a parameter
 * whose value starts with '@' is left out (it is still sent): the '@' rule of every official
 * v2 SDK (see sign.c). The signature is base64(HMAC-SHA1 or HMAC-SHA256(secret_key, string)). */
#ifndef CAPGATE_SIGN_H
#define CAPGATE_SIGN_H
#include <stddef.h>

struct params;

enum sign_method { SIGN_HMAC_SHA1, SIGN_HMAC_SHA256 };

#define SIGN_B64_MAX 48 /* room for a base64 SHA-256 HMAC (44) plus NUL */

/* "HmacSHA256" selects SHA-256; anything else, or NULL, is SHA-1 (as upstream). */
enum sign_method sign_method_parse(const char *value);
const char *sign_method_name(enum sign_method m); /* "HmacSHA1" / "HmacSHA256" */

/* 1 when the '@' rule applies to http_method: "POST" exactly (the SDKs compare upper case). */
int sign_skips_at(const char *http_method);
/* The string to sign for p (its Signature, and with POST its '@' values, left out). Caller
 * frees; NULL on OOM.
 * p is not modified (sorting happens on a private index). */
char *sign_string_to_sign(const char *http_method, const char *host, const char *path,
                          const struct params *p);
/* base64(HMAC(key, data)) into out, NUL-terminated. 0, or -1 on an OpenSSL failure. */
int sign_compute(enum sign_method m, const char *key, size_t key_len, const char *data,
                 size_t data_len, char out[SIGN_B64_MAX]);
/* A key's HMAC states (SHA-1 and SHA-256, inner and outer), computed once so a signature costs
 * the message's hashing alone (sign.c). Lives in secmem; sign_key_free wipes it. NULL on OOM. */
struct sign_key;
struct sign_key *sign_key_new(const char *key, size_t key_len);
void sign_key_free(struct sign_key *k); /* NULL is accepted */
/* sign_compute with a key's states. */
int sign_compute_key(const struct sign_key *k, enum sign_method m, const char *data,
                     size_t data_len, char out[SIGN_B64_MAX]);
/* Sets p's Signature for the request (the method comes from p's SignatureMethod; with POST the
 * '@' values are left out of the string to sign but stay in p). 0/-1. */
int sign_params(struct params *p, const char *http_method, const char *host, const char *path,
                const char *key);
/* Checks p's Signature against key, in constant time. 0 when it matches; -1 when it is missing
 * or differs. A POST with '@' values matches a signature made with them left out (the SDKs'
 * rule) or, failing that, one made over every parameter (the Node SDK with a Version); a GET
 * only one over every parameter. When a name holds a '_', the Java and Python SDKs' spellings of
 * the names are also accepted (sign.c, enum name_form). */
int sign_verify(const struct params *p, const char *http_method, const char *host, const char *path,
                const char *key);
/* sign_params and sign_verify with a key's states. */
int sign_params_key(struct params *p, const char *http_method, const char *host, const char *path,
                    const struct sign_key *k);
int sign_verify_key(const struct params *p, const char *http_method, const char *host,
                    const char *path, const struct sign_key *k);

#endif
