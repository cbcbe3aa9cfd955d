/* audit_spool.c: the spool: append-only JSONL segments written and fsynced by the sink, the
 * replay cursor, and the file helpers audit.file shares. Part of the audit module (audit.c). */
#include "audit_internal.h"

int audit_write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void audit_sync_file_sync(struct audit *a, struct sync_file *f, int force) {
    if (f->fd < 0 || f->unsynced == 0) return;
    uint64_t now = clock_mono_us();
    if (!force && f->unsynced < SYNC_EVERY_RECORDS && now - f->synced_us < SYNC_EVERY_US) return;
    if (fsync(f->fd) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: fsync: %s", strerror(errno));
    }
    f->unsynced = 0;
    f->synced_us = now;
}

/* audit.file, at start and at each audit_reopen. O_APPEND: after a copytruncate rotation the
 * writes go on at the new end, not at the old offset behind a hole of zeros. */
int audit_file_open(const char *path) {
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
}

void audit_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

int audit_mkdir_p(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof(buf)) return -1;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
            buf[i] = c;
        }
    }
    return 0;
}

/* ---- spool ---- */

static int is_segment_name(const char *name) {
    size_t n = strlen(name);
    return name[0] != '.' && n > 6 && strcmp(name + n - 6, ".jsonl") == 0;
}

static int segment_filter(const struct dirent *d) {
    return is_segment_name(d->d_name);
}

/* Segment names in order (they start with a zero-padded wall clock). Caller frees with
 * audit_free_names. -1 when the directory cannot be read. */
int audit_list_segments(const char *dir, struct dirent ***names) {
    return scandir(dir, names, segment_filter, alphasort);
}

void audit_free_names(struct dirent **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

int audit_spool_path(const struct audit *a, const char *name, char *out, size_t outlen) {
    int n = snprintf(out, outlen, "%s/%s", a->cfg->audit.spool_dir, name);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

void audit_spool_close_segment(struct audit *a) {
    if (a->segment.fd < 0) return;
    a->segment.unsynced = a->segment.unsynced ? a->segment.unsynced : 1;
    audit_sync_file_sync(a, &a->segment, 1);
    close(a->segment.fd);
    a->segment.fd = -1;
    a->segment_name[0] = '\0';
    a->segment_bytes = a->segment_records = 0;
}

static int spool_open_segment(struct audit *a) {
    char path[4096];
    snprintf(a->segment_name, sizeof(a->segment_name), "%017llu-%06u-%s.jsonl",
             (unsigned long long)clock_wall_us(), a->segment_seq++ % 1000000, a->safe_instance);
    if (audit_spool_path(a, a->segment_name, path, sizeof(path)) != 0) goto fail;
    a->segment.fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (a->segment.fd < 0) goto fail;
    audit_fsync_dir(a->cfg->audit.spool_dir);
    a->segment.unsynced = 0;
    a->segment.synced_us = clock_mono_us();
    a->segment_bytes = a->segment_records = 0;
    return 0;
fail:
    log_error("audit: cannot create spool segment in %s: %s", a->cfg->audit.spool_dir,
              strerror(errno));
    a->segment_name[0] = '\0';
    return -1;
}

/* One spool line: the record's JSON, plus "uncertain": true when its live write may have
 * landed, and then "batch": "<run>:<seq>", the live batch it was in. */
static int spool_line(const struct audit_node *n, struct strbuf *out) {
    if (audit_record_strbuf(&n->rec, n->uncertain, out) != 0) return -1;
    if (n->uncertain && n->batch[0]) {
        out->len--; /* the closing brace */
        if (strbuf_appendf(out, ",\"batch\":\"%s\"}", n->batch) != 0) return -1;
    }
    return strbuf_appendc(out, '\n');
}

/* Appends nodes to the spool. 0, or -1 (nothing counted; the caller keeps the records). */
int audit_spool_append(struct audit *a, struct audit_node **nodes, size_t n) {
    struct strbuf b;
    int rc = -1;
    strbuf_init(&b);
    for (size_t i = 0; i < n; i++)
        if (spool_line(nodes[i], &b) != 0) goto out;
    if (a->segment.fd >= 0 && a->segment_bytes >= SEGMENT_MAX_BYTES) audit_spool_close_segment(a);
    if (a->segment.fd < 0 && spool_open_segment(a) != 0) goto out;
    if (audit_write_all(a->segment.fd, b.s, b.len) != 0) {
        log_error("audit: spool write %s: %s", a->segment_name, strerror(errno));
        /* a partial line would be skipped at replay; start a fresh segment next time */
        audit_spool_close_segment(a);
        goto out;
    }
    a->segment_bytes += b.len;
    a->segment_records += n;
    a->segment.unsynced += (unsigned)n;
    atomic_fetch_add(&a->spooled, n);
    atomic_fetch_add(&a->spool_depth, n);
    audit_sync_file_sync(a, &a->segment, 0);
    rc = 0;
out:
    if (rc != 0) atomic_fetch_add(&a->file_errors, 1);
    strbuf_cleanup(&b);
    return rc;
}

void audit_cursor_write(struct audit *a, const char *segment, uint64_t off) {
    char path[4096], tmp[4096], line[256];
    if (audit_spool_path(a, CURSOR_NAME, path, sizeof(path)) != 0 ||
        audit_spool_path(a, CURSOR_NAME ".tmp", tmp, sizeof(tmp)) != 0)
        return;
    int len = snprintf(line, sizeof(line), "%s %llu\n", segment, (unsigned long long)off);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || audit_write_all(fd, line, (size_t)len) != 0 || fsync(fd) != 0 ||
        rename(tmp, path) != 0) {
        atomic_fetch_add(&a->file_errors, 1);
        log_error("audit: cannot write the replay cursor: %s", strerror(errno));
    }
    if (fd >= 0) close(fd);
}

/* The offset the cursor file holds for segment, or 0. */
uint64_t audit_cursor_read(struct audit *a, const char *segment) {
    char path[4096], line[256];
    uint64_t off = 0;
    if (audit_spool_path(a, CURSOR_NAME, path, sizeof(path)) != 0) return 0;
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    if (fgets(line, sizeof(line), f)) {
        char *sp = strchr(line, ' ');
        char *nl = strchr(line, '\n');
        if (sp && nl && (size_t)(sp - line) == strlen(segment) &&
            memcmp(line, segment, strlen(segment)) == 0 &&
            num_parse_u64(sp + 1, (size_t)(nl - sp - 1), &off) != 0)
            off = 0;
    }
    fclose(f);
    return off;
}

/* Lines after the cursor in every segment: the spool depth left by an earlier run. */
uint64_t audit_spool_count(struct audit *a) {
    struct dirent **names;
    int n = audit_list_segments(a->cfg->audit.spool_dir, &names);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        if (audit_spool_path(a, names[i]->d_name, path, sizeof(path)) != 0) continue;
        FILE *f = fopen(path, "re");
        if (!f) continue;
        uint64_t off = audit_cursor_read(a, names[i]->d_name);
        if (off && fseeko(f, (off_t)off, SEEK_SET) != 0) off = 0;
        int c;
        while ((c = getc(f)) != EOF) total += c == '\n';
        fclose(f);
    }
    if (n > 0) audit_free_names(names, n);
    return total;
}
