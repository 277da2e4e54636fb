// Counts a process's heap allocations for Benchmarks/allocations/measure.py. Loaded with LD_PRELOAD; on
// SIGUSR2 it appends "<allocations> <bytes>\n" to the file named by ALLOC_COUNTER_FILE. Counts are exact
// and repeatable where timings on a shared machine are not.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong allocations;
static atomic_ulong allocated_bytes;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static int output = -1;

// dlsym itself may call calloc before real_calloc is known: serve that from a static arena.
static char bootstrap[4096];
static size_t bootstrap_used;

static void count(size_t size) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&allocated_bytes, size, memory_order_relaxed);
}

static size_t format(unsigned long value, char *out) {
    char digits[24];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    for (size_t i = 0; i < n; i++) out[i] = digits[n - 1 - i];
    return n;
}

static void report(int signal_number) {
    (void)signal_number;
    if (output < 0) return;
    char line[64];
    size_t n = format(atomic_load(&allocations), line);
    line[n++] = ' ';
    n += format(atomic_load(&allocated_bytes), line + n);
    line[n++] = '\n';
    ssize_t ignored = write(output, line, n);
    (void)ignored;
}

__attribute__((constructor)) static void start(void) {
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    const char *path = getenv("ALLOC_COUNTER_FILE");
    if (path) output = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = report;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &action, NULL);
}

void *malloc(size_t size) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    count(size);
    return real_malloc(size);
}

void *calloc(size_t count_, size_t size) {
    if (!real_calloc) {
        size_t total = (count_ * size + 15) & ~(size_t)15;
        if (bootstrap_used + total > sizeof bootstrap) return NULL;
        void *block = bootstrap + bootstrap_used;
        bootstrap_used += total;
        return block;
    }
    count(count_ * size);
    return real_calloc(count_, size);
}

void *realloc(void *pointer, size_t size) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    count(size);
    return real_realloc(pointer, size);
}

int posix_memalign(void **pointer, size_t alignment, size_t size) {
    if (!real_posix_memalign) real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    count(size);
    return real_posix_memalign(pointer, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (!real_aligned_alloc) real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    count(size);
    return real_aligned_alloc(alignment, size);
}

void free(void *pointer) {
    static void (*real_free)(void *);
    if ((char *)pointer >= bootstrap && (char *)pointer < bootstrap + sizeof bootstrap) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(pointer);
}
