/* dashboard.h: the /dashboard page of the admin listener. The page (proxy/dashboard/, built into
 * the binary) holds no data: it is served without the admin token, and its script reads
 * /admin/stats, /admin/audit, /metrics and /readyz with the token the operator types in, sent
 * as "Authorization: Bearer". Main thread only. */
#ifndef CAPGATE_DASHBOARD_H
#define CAPGATE_DASHBOARD_H

struct httpd_req;

/* Router hook for the admin listener: when req's path is /dashboard or under /dashboard/, it is
 * answered now and 1 is returned; otherwise 0 and req is untouched. token_required: the
 * listener has an admin token; authorized: req carries it (or none is needed). Only
 * /dashboard/auth uses them, to tell the page whether to ask for a token without a 401. */
int dashboard_handle(struct httpd_req *req, int token_required, int authorized);

#endif
