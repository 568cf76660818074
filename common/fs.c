#include "fs.h"

#include "buf.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int fs_mkdirs(const char *path, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "path too long: %.64s...", path);
        return -1;
    }
    for (char *p = tmp + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(tmp, 0750) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
            return -1;
        }
        *p = saved;
        if (!saved)
            break;
    }
    return 0;
}

int fs_read_file(const char *path, size_t max, struct buf *b, char *err, size_t errlen)
{
    char chunk[8192];
    size_t n;
    int rc = -1;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b->len + n > max) {
            snprintf(err, errlen, "cannot read %s: larger than %zu bytes", path, max);
            goto done;
        }
        if (buf_append(b, chunk, n) < 0) {
            snprintf(err, errlen, "cannot read %s: out of memory", path);
            goto done;
        }
    }
    if (ferror(f)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    fclose(f);
    return rc;
}
