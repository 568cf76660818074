/* Small file-system helpers. */
#ifndef MQB_FS_H
#define MQB_FS_H

#include <stddef.h>

/* mkdir -p path (mode 0750). 0, or -1 with "cannot create DIR: reason". */
int fs_mkdirs(const char *path, char *err, size_t errlen);

#endif
