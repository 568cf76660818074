/* Small file-system helpers. */
#ifndef MQB_FS_H
#define MQB_FS_H

#include <stddef.h>

/* mkdir -p path (mode 0750). 0, or -1 with "cannot create DIR: reason". */
int fs_mkdirs(const char *path, char *err, size_t errlen);

struct buf;

/* Append the whole file to b, refusing files over max bytes. 0, or -1 with
 * "cannot read PATH: reason" in err (reason "larger than N bytes" when too
 * big). */
int fs_read_file(const char *path, size_t max, struct buf *b, char *err, size_t errlen);

#endif
