/* fsjournal: an LD_PRELOAD shim that journals what a process writes to the hub's database files.
 *
 * For every write, truncate and fdatasync/fsync the process makes to <FSJ_DIR>/hub.db or
 * <FSJ_DIR>/hub.db-wal it appends one record to the file FSJ_LOG, after the real call returned:
 *   struct { u32 magic; u8 op; u8 file; u16 pad; i64 offset; u64 length; } + the bytes written (op 'W')
 * op: 'W' write (offset, length, data), 'T' truncate (length), 'S' fsync/fdatasync returned 0,
 *     'U' unlink. file: 0 = hub.db, 1 = hub.db-wal.
 * A sync record is appended after the sync returned and before control goes back to SQLite, so it
 * precedes anything the hub does because the sync succeeded (such as answering 200). The test then
 * rebuilds what a disk could hold after a power cut at any point of the journal: every write that a
 * later sync of the same file covered, plus any subset of the rest (torn at 512-byte sectors).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536
#define MAGIC 0x4a534621u

struct rec {
    uint32_t magic;
    uint8_t op;
    uint8_t file;
    uint16_t pad;
    int64_t offset;
    uint64_t length;
};

static int logfd = -1;
static char dir[4096];
static size_t dirlen;
static unsigned char tracked[MAX_FD]; /* file id + 1; 0 = not a database file */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_unlink)(const char *);

__attribute__((constructor)) static void fsj_init(void) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    const char *log = getenv("FSJ_LOG");
    const char *d = getenv("FSJ_DIR");
    if (!log || !d || strlen(d) + 2 > sizeof dir) return;
    strcpy(dir, d);
    dirlen = strlen(dir);
    while (dirlen > 1 && dir[dirlen - 1] == '/') dir[--dirlen] = 0;
    logfd = real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
}

static int file_id(const char *path) {
    if (logfd < 0 || !path || strncmp(path, dir, dirlen) != 0 || path[dirlen] != '/') return -1;
    const char *name = path + dirlen + 1;
    if (strcmp(name, "hub.db") == 0) return 0;
    if (strcmp(name, "hub.db-wal") == 0) return 1;
    return -1;
}

static void emit(uint8_t op, int file, int64_t offset, uint64_t length, const void *data) {
    struct rec r = {MAGIC, op, (uint8_t)file, 0, offset, length};
    struct iovec iov[2] = {{&r, sizeof r}, {(void *)data, op == 'W' ? length : 0}};
    int saved = errno;
    pthread_mutex_lock(&mu);
    size_t want = sizeof r + iov[1].iov_len;
    ssize_t n = writev(logfd, iov, 2);
    pthread_mutex_unlock(&mu);
    if (n != (ssize_t)want) abort(); /* a journal with a hole would make the test lie: stop loudly */
    errno = saved;
}

static void opened(int fd, const char *path, int flags) {
    if (fd < 0 || fd >= MAX_FD) return;
    int id = file_id(path);
    tracked[fd] = id < 0 ? 0 : id + 1;
    if (id >= 0 && (flags & O_TRUNC)) emit('T', id, 0, 0, NULL);
}

static int track(int fd) { return fd >= 0 && fd < MAX_FD ? (int)tracked[fd] - 1 : -1; }

#define MODE_ARG                                   \
    mode_t mode = 0;                               \
    if (flags & (O_CREAT | O_TMPFILE)) {           \
        va_list ap;                                \
        va_start(ap, flags);                       \
        mode = va_arg(ap, mode_t);                 \
        va_end(ap);                                \
    }

int open(const char *path, int flags, ...) {
    MODE_ARG
    int fd = real_open(path, flags, mode);
    opened(fd, path, flags);
    return fd;
}

int open64(const char *path, int flags, ...) {
    MODE_ARG
    int fd = real_open64(path, flags, mode);
    opened(fd, path, flags);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    MODE_ARG
    int fd = real_openat(dirfd, path, flags, mode);
    if (path[0] == '/') opened(fd, path, flags);
    else if (fd >= 0 && fd < MAX_FD) tracked[fd] = 0;
    return fd;
}

int close(int fd) {
    if (fd >= 0 && fd < MAX_FD) tracked[fd] = 0;
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    int id = track(fd);
    if (id < 0) return real_write(fd, buf, n);
    off_t at = lseek(fd, 0, SEEK_CUR);
    ssize_t done = real_write(fd, buf, n);
    if (done > 0) emit('W', id, at, (uint64_t)done, buf);
    return done;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    ssize_t done = real_pwrite(fd, buf, n, off);
    int id = track(fd);
    if (id >= 0 && done > 0) emit('W', id, off, (uint64_t)done, buf);
    return done;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    ssize_t done = real_pwrite64(fd, buf, n, off);
    int id = track(fd);
    if (id >= 0 && done > 0) emit('W', id, off, (uint64_t)done, buf);
    return done;
}

int fsync(int fd) {
    int rc = real_fsync(fd);
    int id = track(fd);
    if (id >= 0 && rc == 0) emit('S', id, 0, 0, NULL);
    return rc;
}

int fdatasync(int fd) {
    int rc = real_fdatasync(fd);
    int id = track(fd);
    if (id >= 0 && rc == 0) emit('S', id, 0, 0, NULL);
    return rc;
}

int ftruncate(int fd, off_t len) {
    int rc = real_ftruncate(fd, len);
    int id = track(fd);
    if (id >= 0 && rc == 0) emit('T', id, 0, (uint64_t)len, NULL);
    return rc;
}

int ftruncate64(int fd, off_t len) {
    int rc = real_ftruncate64(fd, len);
    int id = track(fd);
    if (id >= 0 && rc == 0) emit('T', id, 0, (uint64_t)len, NULL);
    return rc;
}

int unlink(const char *path) {
    int rc = real_unlink(path);
    int id = file_id(path);
    if (id >= 0 && rc == 0) emit('U', id, 0, 0, NULL);
    return rc;
}
