/* vhu-guard.h: shared mappings whose file may shrink under us.
 *
 * A frontend can truncate the file behind guest memory at any time; a load
 * or store to a page beyond the new end of file raises SIGBUS, which would
 * end the process.  A guard covers one such mapping: on a fault inside it,
 * a process-wide SIGBUS handler replaces the whole mapping with anonymous
 * zero pages (so the faulting instruction completes, reading zeros or
 * writing into memory nobody else sees), marks the guard retired and bumps a
 * global fault counter.  Whoever owns the mapping then refuses it
 * (vhu-mem.h does for guest memory) and reports the damage.
 *
 * The handler is installed once, when the first guard is added, with
 * SA_SIGINFO; a SIGBUS that is not a fault inside a guarded mapping goes to
 * the handler that was installed before (or takes the default action, which
 * ends the process as it would have without us).  Code that installs its own
 * SIGBUS handler later must chain to the previous one.  A thread that
 * touches guarded memory must not block SIGBUS (the kernel kills a process
 * whose synchronous fault signal is blocked).
 *
 * The kernel reports a truncated page that a system call reads or writes
 * (write, sendmsg, vmsplice) as EFAULT, without a signal: after such an
 * error on guarded memory, vhu_guard_probe_iov() touches the pages from user
 * space so that the region is retired now.
 *
 * Threads: every function may be called from any thread; the registry is
 * lock-free for the handler (adding a guard takes a mutex only to grow it).
 * Cost: nothing on the access path; vhu_guard_get_faults() is one relaxed
 * atomic load. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

G_BEGIN_DECLS

typedef struct _VhuGuard VhuGuard;

/* Guards [@addr, @addr + @len) (rounded out to whole pages), a MAP_SHARED
 * mapping of a file the caller does not trust to keep its size.  Never
 * fails. */
VhuGuard *vhu_guard_add(void *addr, gsize len);
/* Stops guarding; call it before unmapping.  If the handler is retiring the
 * mapping at that moment, waits for it to finish (a single mmap). */
void vhu_guard_remove(VhuGuard *guard);
/* TRUE once a fault replaced the mapping with zero pages. */
gboolean vhu_guard_is_retired(const VhuGuard *guard);
/* How many mappings were retired since the process started; never
 * decreases. */
guint vhu_guard_get_faults(void);
/* Reads one byte of every page of @iov (memory the caller knows is mapped,
 * e.g. iovecs translated from guest memory), so that a truncated guarded
 * mapping among them is retired.  TRUE when the fault counter moved: retry
 * the system call that failed with EFAULT (it now sees zero pages), or
 * report the damage. */
gboolean vhu_guard_probe_iov(const struct iovec *iov, guint n);

G_END_DECLS
