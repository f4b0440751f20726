/* vhu-mem.h: the frontend's memory table as seen by a backend.
 *
 * A VhuMemTable is immutable once built and reference counted: every change
 * (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) builds a new table, so a request
 * popped from a ring keeps the mappings its iovecs point into alive for as
 * long as it holds its reference, whatever the frontend does meanwhile.
 *
 * Memory that disappears: a region whose file is sealed against shrinking
 * (F_SEAL_SHRINK) is recorded as sealed and needs nothing more.  Any other
 * region is guarded (vhu-guard.h): when the frontend truncates its file, the
 * first access to a lost page, from any thread and any code (plain loads,
 * memcpy, pixman), reads zeros instead of ending the process; the region is
 * retired.  Translations then refuse its addresses as if they were unmapped,
 * and vhu_mem_table_is_damaged() says so for every table holding it.  A
 * system call on lost pages fails with EFAULT instead: see
 * vhu_guard_probe_iov().  A sealed region's file stays open with its
 * mapping, so its pages can be exported: vhu_mem_host_to_fd().  Threads: a table is immutable,
 * every function may be called from any thread. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

#include "vhu-proto.h"

G_BEGIN_DECLS

typedef struct _VhuMemTable VhuMemTable;

VhuMemTable *vhu_mem_table_new(void);
VhuMemTable *vhu_mem_table_ref(VhuMemTable *table);
void vhu_mem_table_unref(VhuMemTable *table);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VhuMemTable, vhu_mem_table_unref)

/* Returns a new table holding @table's regions plus @region mapped from @fd
 * (the fd is not consumed).  Fails on overlaps (gpa or uva), zero size,
 * arithmetic overflow, more than @max_regions regions, or mmap failure. */
VhuMemTable *vhu_mem_table_add(const VhuMemTable *table, const VhuMemRegionDesc *region, int fd,
                               guint max_regions, GError **error);
/* Returns a new table without the region matching gpa, uva and size. */
VhuMemTable *vhu_mem_table_remove(const VhuMemTable *table, const VhuMemRegionDesc *region,
                                  GError **error);
guint vhu_mem_table_n_regions(const VhuMemTable *table);
/* TRUE when a region of @table was retired because its file shrank under the
 * mapping (the frontend truncated guest memory).  Any thread, lock-free; one
 * relaxed atomic load while nothing in the process ever faulted. */
gboolean vhu_mem_table_is_damaged(const VhuMemTable *table);

typedef struct {
  guint64 gpa;
  guint64 size;
  guint64 uva;
  gboolean sealed;  /* its file cannot shrink: not guarded */
  gboolean retired; /* its file shrank: reads as zeros, refused */
} VhuMemRegionInfo;

/* Region @i of @table, in guest-physical order; FALSE when out of range
 * (for naming a damaged region in a log line). */
gboolean vhu_mem_table_get_region(const VhuMemTable *table, guint i, VhuMemRegionInfo *info);

/* Guest-physical -> host pointer.  *len is the wanted length on input and the
 * contiguous mapped length from @gpa on output (never beyond the region end).
 * NULL when @gpa is in no region or in a retired one (all three
 * translations refuse retired regions). */
void *vhu_mem_gpa_to_host(const VhuMemTable *table, guint64 gpa, guint64 *len);
/* Frontend virtual address -> host pointer; the whole [uva, uva+len) must lie
 * in one region, else NULL. */
void *vhu_mem_uva_to_host(const VhuMemTable *table, guint64 uva, guint64 len);
/* Gathers [gpa, gpa+len) into at most @max_iov iovecs (a buffer may span
 * regions).  Returns the number of iovecs used, or -1 when a byte is unmapped,
 * the range overflows, or more than @max_iov iovecs would be needed. */
int vhu_mem_gpa_to_iov(const VhuMemTable *table, guint64 gpa, guint64 len, struct iovec *iov,
                       guint max_iov);

/* Export (dmabuf through udmabuf): a region whose file is sealed against
 * shrinking keeps a duplicate of its fd, opened when the region is added and
 * closed when the last table holding its mapping goes.  A part of a file. */
typedef struct {
  int fd; /* owned by the table: valid while a table holding it lives */
  guint64 offset;
  guint64 len;
} VhuMemFdPiece;

/* The file pieces behind host range [@host, @host + @len), which points
 * into mappings of @table (pointers from the translations above): appended
 * to @pieces (a GArray of VhuMemFdPiece), one per file range, adjacent ones
 * merged.  FALSE, @pieces unchanged, when a byte is outside the table's
 * mappings or in a region whose file is not sealed (no fd kept: it could
 * shrink under an importer).  The fds are borrowed: valid while the caller
 * holds a reference on @table (dup one to keep it longer). */
gboolean vhu_mem_host_to_fd(const VhuMemTable *table, const void *host, gsize len, GArray *pieces);

/* Scatter/gather copy helpers; return the number of bytes copied. */
gsize vhu_iov_to_buf(const struct iovec *iov, guint n, gsize offset, void *buf, gsize len);
gsize vhu_iov_from_buf(const struct iovec *iov, guint n, gsize offset, const void *buf, gsize len);
gsize vhu_iov_size(const struct iovec *iov, guint n);

G_END_DECLS
