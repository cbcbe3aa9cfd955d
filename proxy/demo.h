/* demo.h: the /demo page of the admin listener ("demo": true, local development). The page runs
 * the whole captcha flow in a browser through the full pipeline: its two calls, POST
 * /demo/api/iframe and POST /demo/api/check, become real HTTP calls to the gateway's own front
 * listener as the config's demo_app (Bearer token, never sent to the browser), so they are
 * authenticated, validated, limited, audited and counted like any app's call. Main thread only. */
#ifndef CAPGATE_DEMO_H
#define CAPGATE_DEMO_H

struct event_base;
struct httpd_req;
struct config;
struct demo;

/* New demo on base (borrowed, must outlive the demo), calling the front listener at
 * front_host:front_port (front_host copied; a wildcard address such as 0.0.0.0 or :: is
 * reached on loopback). Starts disabled until demo_configure. NULL on OOM. */
struct demo *demo_new(struct event_base *base, const char *front_host, int front_port);

/* Takes the demo settings of c (borrowed for the call only): on when c->demo, calling as the
 * token app c->demo_app (name and token copied). Called at startup and after each reload;
 * calls already in flight keep the token they started with. 0, or -1 on OOM (then the demo is
 * off). */
int demo_configure(struct demo *d, const struct config *c);

/* Router hook for the admin listener: when the demo is on and req's path is /demo or under
 * /demo/, the demo takes the request (it ends it exactly once, now or later, and handles its
 * cancel) and 1 is returned; otherwise 0 and req is untouched. */
int demo_handle(struct demo *d, struct httpd_req *req);

/* Frees d and any front call still in flight (its callback does not fire). Call it after the
 * httpd whose requests it served was freed: those requests must already be ended or cancelled.
 * NULL accepted. */
void demo_free(struct demo *d);

#endif
