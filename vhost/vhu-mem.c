/* vhu-mem.c: the frontend's memory table, immutable and reference counted.
 *
 * Regions are kept sorted by guest-physical address so a lookup is a binary
 * search.  A mapping is shared between the tables that contain its region
 * (a table built by add/remove references the mappings of its parent), and
 * is unmapped when the last table holding it goes away.
 *
 * A file sealed against shrinking (F_SEAL_SHRINK, as QEMU's memfd backend
 * seals guest RAM) keeps its pages; any other mapping is guarded
 * (vhu-guard.h): if the frontend truncates its file, the first access to a
 * lost page turns the whole mapping into zero pages and retires it.  From
 * then on translations refuse its addresses and every table holding it says
 * it is damaged.  A retired mapping stays mapped (zero pages) until the last
 * table holding it goes, so pointers handed out earlier stay valid. */
#include "vhu-mem.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vhu-guard.h"

typedef struct {
  gatomicrefcount ref;
  void *addr;
  gsize len;
  gboolean sealed;
  VhuGuard *guard; /* NULL when sealed */
  int fd;          /* sealed: a duplicate of the region's file, for export; else -1 */
} VhuMapping;

typedef struct {
  guint64 gpa;
  guint64 size;
  guint64 uva;
  guint64 mmap_offset;
  guint8 *host; /* mapping->addr + mmap_offset */
  VhuMapping *mapping;
} VhuMemRegion;

struct _VhuMemTable {
  gatomicrefcount ref;
  guint n_regions;
  VhuMemRegion regions[];
};

static VhuMapping *
mapping_ref(VhuMapping *mapping)
{
  g_atomic_ref_count_inc(&mapping->ref);
  return mapping;
}

static void
mapping_unref(VhuMapping *mapping)
{
  if (!g_atomic_ref_count_dec(&mapping->ref))
    return;
  vhu_guard_remove(mapping->guard);
  munmap(mapping->addr, mapping->len);
  if (mapping->fd >= 0)
    close(mapping->fd);
  g_free(mapping);
}

static VhuMemTable *
table_alloc(guint n_regions)
{
  VhuMemTable *table = g_malloc0(sizeof(VhuMemTable) + n_regions * sizeof(VhuMemRegion));

  g_atomic_ref_count_init(&table->ref);
  table->n_regions = n_regions;
  return table;
}

VhuMemTable *
vhu_mem_table_new(void)
{
  return table_alloc(0);
}

VhuMemTable *
vhu_mem_table_ref(VhuMemTable *table)
{
  g_return_val_if_fail(table != NULL, NULL);
  g_atomic_ref_count_inc(&table->ref);
  return table;
}

void
vhu_mem_table_unref(VhuMemTable *table)
{
  if (table == NULL || !g_atomic_ref_count_dec(&table->ref))
    return;
  for (guint i = 0; i < table->n_regions; i++)
    mapping_unref(table->regions[i].mapping);
  g_free(table);
}

guint
vhu_mem_table_n_regions(const VhuMemTable *table)
{
  return table->n_regions;
}

/* Costs one relaxed load while no mapping ever faulted. */
static gboolean
mapping_retired(const VhuMapping *mapping)
{
  return G_UNLIKELY(vhu_guard_get_faults() != 0) && mapping->guard != NULL
         && vhu_guard_is_retired(mapping->guard);
}

gboolean
vhu_mem_table_is_damaged(const VhuMemTable *table)
{
  if (G_LIKELY(vhu_guard_get_faults() == 0))
    return FALSE;
  for (guint i = 0; i < table->n_regions; i++) {
    if (mapping_retired(table->regions[i].mapping))
      return TRUE;
  }
  return FALSE;
}

gboolean
vhu_mem_table_get_region(const VhuMemTable *table, guint i, VhuMemRegionInfo *info)
{
  const VhuMemRegion *r;

  if (i >= table->n_regions)
    return FALSE;
  r = &table->regions[i];
  *info = (VhuMemRegionInfo){
    .gpa = r->gpa,
    .size = r->size,
    .uva = r->uva,
    .sealed = r->mapping->sealed,
    .retired = mapping_retired(r->mapping),
  };
  return TRUE;
}

static gboolean
ranges_overlap(guint64 a, guint64 a_size, guint64 b, guint64 b_size)
{
  /* Both ends were checked not to overflow. */
  return a < b + b_size && b < a + a_size;
}

static gboolean
check_region(const VhuMemTable *table, const VhuMemRegionDesc *r, guint max_regions, GError **error)
{
  guint64 end;

  if (r->memory_size == 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "memory region of size 0");
    return FALSE;
  }
  if (!g_uint64_checked_add(&end, r->guest_phys_addr, r->memory_size)
      || !g_uint64_checked_add(&end, r->userspace_addr, r->memory_size)
      || !g_uint64_checked_add(&end, r->mmap_offset, r->memory_size) || end > G_MAXSIZE
      || end > (guint64)G_MAXINT64) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "memory region gpa 0x%" G_GINT64_MODIFIER "x size 0x%" G_GINT64_MODIFIER
                "x overflows",
                (guint64)r->guest_phys_addr, (guint64)r->memory_size);
    return FALSE;
  }
  if (table->n_regions >= max_regions) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "more than %u memory regions", max_regions);
    return FALSE;
  }
  for (guint i = 0; i < table->n_regions; i++) {
    const VhuMemRegion *o = &table->regions[i];

    if (ranges_overlap(r->guest_phys_addr, r->memory_size, o->gpa, o->size)
        || ranges_overlap(r->userspace_addr, r->memory_size, o->uva, o->size)) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "memory region gpa 0x%" G_GINT64_MODIFIER "x size 0x%" G_GINT64_MODIFIER
                  "x overlaps region gpa 0x%" G_GINT64_MODIFIER "x",
                  (guint64)r->guest_phys_addr, (guint64)r->memory_size, o->gpa);
      return FALSE;
    }
  }
  return TRUE;
}

static VhuMapping *
map_fd(int fd, gsize len, GError **error)
{
  struct stat st;
  VhuMapping *mapping;
  void *addr;
  int seals;

  /* Touching a page beyond the end of the file raises SIGBUS: the file must
   * cover the whole region when it is added.  Seals first: once sealed, the
   * size seen next holds for good. */
  seals = fd >= 0 ? fcntl(fd, F_GET_SEALS) : -1;
  if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "memory region fd %d is not a regular file", fd);
    return NULL;
  }
  if (st.st_size < 0 || (guint64)st.st_size < len) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "memory region needs 0x%" G_GSIZE_MODIFIER
                "x bytes, its file has 0x%" G_GINT64_MODIFIER "x",
                len, (gint64)st.st_size);
    return NULL;
  }
  addr = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (addr == MAP_FAILED) {
    int errsv = errno;

    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "cannot map memory region: %s",
                g_strerror(errsv));
    return NULL;
  }
  mapping = g_new0(VhuMapping, 1);
  g_atomic_ref_count_init(&mapping->ref);
  mapping->addr = addr;
  mapping->len = len;
  mapping->sealed = seals >= 0 && (seals & F_SEAL_SHRINK);
  mapping->fd = -1;
  if (!mapping->sealed)
    mapping->guard = vhu_guard_add(addr, len);
  else if ((mapping->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0)
    g_debug("memory region: no duplicate fd for export: %s", g_strerror(errno));
  return mapping;
}

VhuMemTable *
vhu_mem_table_add(const VhuMemTable *table, const VhuMemRegionDesc *region, int fd,
                  guint max_regions, GError **error)
{
  VhuMemRegionDesc r;
  VhuMapping *mapping;
  VhuMemTable *next;
  guint pos, j = 0;

  g_return_val_if_fail(table != NULL && region != NULL, NULL);
  memcpy(&r, region, sizeof r);
  if (!check_region(table, &r, max_regions, error))
    return NULL;
  mapping = map_fd(fd, r.memory_size + r.mmap_offset, error);
  if (mapping == NULL)
    return NULL;

  next = table_alloc(table->n_regions + 1);
  for (pos = 0; pos < table->n_regions && table->regions[pos].gpa < r.guest_phys_addr; pos++)
    ;
  for (guint i = 0; i < table->n_regions; i++) {
    if (i == pos)
      j++;
    next->regions[j] = table->regions[i];
    mapping_ref(next->regions[j].mapping);
    j++;
  }
  next->regions[pos] = (VhuMemRegion){
    .gpa = r.guest_phys_addr,
    .size = r.memory_size,
    .uva = r.userspace_addr,
    .mmap_offset = r.mmap_offset,
    .host = (guint8 *)mapping->addr + r.mmap_offset,
    .mapping = mapping,
  };
  return next;
}

VhuMemTable *
vhu_mem_table_remove(const VhuMemTable *table, const VhuMemRegionDesc *region, GError **error)
{
  VhuMemRegionDesc r;
  VhuMemTable *next;
  guint found = G_MAXUINT, j = 0;

  g_return_val_if_fail(table != NULL && region != NULL, NULL);
  memcpy(&r, region, sizeof r);
  for (guint i = 0; i < table->n_regions; i++) {
    const VhuMemRegion *o = &table->regions[i];

    if (o->gpa == r.guest_phys_addr && o->uva == r.userspace_addr && o->size == r.memory_size)
      found = i;
  }
  if (found == G_MAXUINT) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND,
                "no memory region gpa 0x%" G_GINT64_MODIFIER "x size 0x%" G_GINT64_MODIFIER "x",
                (guint64)r.guest_phys_addr, (guint64)r.memory_size);
    return NULL;
  }
  next = table_alloc(table->n_regions - 1);
  for (guint i = 0; i < table->n_regions; i++) {
    if (i == found)
      continue;
    next->regions[j] = table->regions[i];
    mapping_ref(next->regions[j].mapping);
    j++;
  }
  return next;
}

/* The mapping of @table holding host address @p, or NULL. */
static const VhuMapping *
find_host(const VhuMemTable *table, const guint8 *p)
{
  for (guint i = 0; i < table->n_regions; i++) {
    const VhuMapping *m = table->regions[i].mapping;

    if ((guintptr)p >= (guintptr)m->addr && (guintptr)p - (guintptr)m->addr < m->len)
      return m;
  }
  return NULL;
}

gboolean
vhu_mem_host_to_fd(const VhuMemTable *table, const void *host, gsize len, GArray *pieces)
{
  const guint8 *p = host;
  guint start = pieces->len;

  g_return_val_if_fail(pieces != NULL && g_array_get_element_size(pieces) == sizeof(VhuMemFdPiece),
                       FALSE);
  while (len > 0) {
    const VhuMapping *m = find_host(table, p);
    VhuMemFdPiece piece, *last;

    if (m == NULL || m->fd < 0) {
      g_array_set_size(pieces, start);
      return FALSE;
    }
    /* Mapped from file offset 0: the offset in the file is the one in the
     * mapping. */
    piece.fd = m->fd;
    piece.offset = (guint64)((guintptr)p - (guintptr)m->addr);
    piece.len = MIN(len, m->len - piece.offset);
    last = pieces->len > start ? &g_array_index(pieces, VhuMemFdPiece, pieces->len - 1) : NULL;
    if (last && last->fd == piece.fd && last->offset + last->len == piece.offset)
      last->len += piece.len;
    else
      g_array_append_val(pieces, piece);
    p += piece.len;
    len -= piece.len;
  }
  return TRUE;
}

/* The region holding @gpa, or NULL. */
static const VhuMemRegion *
find_gpa(const VhuMemTable *table, guint64 gpa)
{
  guint lo = 0, hi = table->n_regions;

  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    const VhuMemRegion *r = &table->regions[mid];

    if (gpa < r->gpa)
      hi = mid;
    else if (gpa - r->gpa >= r->size)
      lo = mid + 1;
    else
      return r;
  }
  return NULL;
}

void *
vhu_mem_gpa_to_host(const VhuMemTable *table, guint64 gpa, guint64 *len)
{
  const VhuMemRegion *r = find_gpa(table, gpa);
  guint64 off;

  if (r == NULL || mapping_retired(r->mapping)) {
    *len = 0;
    return NULL;
  }
  off = gpa - r->gpa;
  *len = MIN(*len, r->size - off);
  return r->host + off;
}

void *
vhu_mem_uva_to_host(const VhuMemTable *table, guint64 uva, guint64 len)
{
  for (guint i = 0; i < table->n_regions; i++) {
    const VhuMemRegion *r = &table->regions[i];

    if (uva >= r->uva && uva - r->uva < r->size && len <= r->size - (uva - r->uva))
      return mapping_retired(r->mapping) ? NULL : r->host + (uva - r->uva);
  }
  return NULL;
}

int
vhu_mem_gpa_to_iov(const VhuMemTable *table, guint64 gpa, guint64 len, struct iovec *iov,
                   guint max_iov)
{
  guint64 end;
  guint n = 0;

  if (!g_uint64_checked_add(&end, gpa, len))
    return -1;
  while (len > 0) {
    guint64 chunk = len;
    void *host;

    if (n >= max_iov || n >= G_MAXINT)
      return -1;
    host = vhu_mem_gpa_to_host(table, gpa, &chunk);
    if (host == NULL)
      return -1;
    iov[n].iov_base = host;
    iov[n].iov_len = chunk;
    n++;
    gpa += chunk;
    len -= chunk;
  }
  return (int)n;
}

gsize
vhu_iov_size(const struct iovec *iov, guint n)
{
  gsize total = 0;

  for (guint i = 0; i < n; i++)
    total += iov[i].iov_len;
  return total;
}

/* Copies between @buf and the bytes of @iov from @offset on; @to_buf picks
 * the direction. */
static gsize
iov_copy(const struct iovec *iov, guint n, gsize offset, guint8 *buf, gsize len, gboolean to_buf)
{
  gsize done = 0;

  for (guint i = 0; i < n && done < len; i++) {
    gsize chunk;
    guint8 *base;

    if (offset >= iov[i].iov_len) {
      offset -= iov[i].iov_len;
      continue;
    }
    base = (guint8 *)iov[i].iov_base + offset;
    chunk = MIN(iov[i].iov_len - offset, len - done);
    if (to_buf)
      memcpy(buf + done, base, chunk);
    else
      memcpy(base, buf + done, chunk);
    done += chunk;
    offset = 0;
  }
  return done;
}

gsize
vhu_iov_to_buf(const struct iovec *iov, guint n, gsize offset, void *buf, gsize len)
{
  return iov_copy(iov, n, offset, buf, len, TRUE);
}

gsize
vhu_iov_from_buf(const struct iovec *iov, guint n, gsize offset, const void *buf, gsize len)
{
  return iov_copy(iov, n, offset, (guint8 *)buf, len, FALSE);
}
