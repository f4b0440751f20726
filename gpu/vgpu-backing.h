/* vgpu-backing.h: the guest memory attached to a resource.
 *
 * RESOURCE_ATTACH_BACKING's entries, translated once into host iovecs.  A
 * backing keeps a reference on the memory table it was translated with, so
 * its pointers stay valid (the mappings stay) for as long as the backing
 * lives, whatever the frontend does to its memory table meanwhile
 * (SET_MEM_TABLE, REM_MEM_REG).  The guest may write the memory at any time:
 * readers get whatever it holds when they read.
 *
 * Readers: a display sink that reads guest pixels after the device returned
 * (a socket writer thread) takes a reference and brackets the reading with
 * begin_read/end_read.  A sink that hands the pages themselves to the kernel
 * (vmsplice into a socket), so that its peer reads them later, brackets that
 * with begin_loan/end_loan until the peer has read them.  The device does not
 * hand the memory back to the guest (RESOURCE_DETACH_BACKING,
 * RESOURCE_UNREF) while it is read or lent, and does not start another
 * transfer into the resource while it is read; the idle notify fires (from
 * the reader's thread) when the last reader or loan ends.  References, read
 * marks and loans are thread-safe; the rest is immutable.
 *
 * Host memory: a backing's list of host pieces is charged against a
 * VgpuHostmem budget before it is allocated (vgpu_backing_charge_for: the
 * record and 24 bytes per piece, what it allocates), and credited when the
 * last reference goes, so a reader still sending it keeps it charged. */
#pragma once

#include <glib.h>
#include <linux/virtio_gpu.h>
#include <sys/uio.h>

#include "vgpu-image.h"
#include "vhu-mem.h"

G_BEGIN_DECLS

#define VGPU_BACKING_ERROR (vgpu_backing_error_quark())
GQuark vgpu_backing_error_quark(void);
typedef enum {
  VGPU_BACKING_ERROR_UNMAPPED, /* an entry is not (entirely) in guest memory */
  VGPU_BACKING_ERROR_SIZE,     /* the entries add up to more than 2^64 bytes */
  VGPU_BACKING_ERROR_BUDGET,   /* its piece list would exceed the host memory budget */
} VgpuBackingError;

typedef struct _VgpuBacking VgpuBacking;

/* Translates @n entries through @mem (NULL: no memory; only zero-length
 * entries then succeed).  Adjacent pieces are merged.  The piece list is
 * charged against @hostmem (NULL: not charged).  On failure *bad_entry is
 * the index of the offending entry (@n for the budget).  @entries must not
 * change meanwhile (a private copy, not guest memory). */
VgpuBacking *vgpu_backing_new(VgpuHostmem *hostmem, VhuMemTable *mem,
                              const struct virtio_gpu_mem_entry *entries, guint n, guint *bad_entry,
                              GError **error);
/* Bytes charged for a backing of @pieces host pieces. */
guint64 vgpu_backing_charge_for(guint pieces);
/* Bytes this backing is charged. */
guint64 vgpu_backing_get_charge(const VgpuBacking *backing);
VgpuBacking *vgpu_backing_ref(VgpuBacking *backing);
void vgpu_backing_unref(VgpuBacking *backing);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VgpuBacking, vgpu_backing_unref)

guint64 vgpu_backing_get_size(const VgpuBacking *backing);
/* Copies [@offset, @offset + @len), which the caller checked lies inside. */
void vgpu_backing_read(const VgpuBacking *backing, guint64 offset, void *dst, gsize len);
/* Appends to @iov (a GArray of struct iovec) the host pieces of [@offset,
 * @offset + @len), which the caller checked lies inside. */
void vgpu_backing_append_iov(const VgpuBacking *backing, guint64 offset, gsize len, GArray *iov);

/* For dmabuf export: appends to @pieces (a GArray of VhuMemFdPiece) the
 * file pieces behind [@offset, @offset + @len), which the caller checked
 * lies inside (vhu_mem_host_to_fd).  FALSE, @pieces unchanged, when a byte
 * lies in a region whose file is not sealed against shrinking.  The fds
 * are valid while the backing lives (it holds its memory table). */
gboolean vgpu_backing_append_fd_pieces(const VgpuBacking *backing, guint64 offset, gsize len,
                                       GArray *pieces);
/* TRUE while someone besides the caller's one reference holds @backing
 * (the device's resource, a sink, a buffer downstream): for caches keyed by
 * backing, which drop an entry once theirs is the last reference. */
gboolean vgpu_backing_is_shared(const VgpuBacking *backing);

void vgpu_backing_set_idle_notify(VgpuBacking *backing, VgpuNotify *notify);
void vgpu_backing_begin_read(VgpuBacking *backing);
void vgpu_backing_end_read(VgpuBacking *backing);
gboolean vgpu_backing_is_busy(VgpuBacking *backing);
void vgpu_backing_begin_loan(VgpuBacking *backing);
void vgpu_backing_end_loan(VgpuBacking *backing);
gboolean vgpu_backing_is_lent(VgpuBacking *backing);

G_END_DECLS
