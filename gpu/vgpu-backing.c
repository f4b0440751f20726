/* vgpu-backing.c: resource backing in guest memory. */
#include "vgpu-backing.h"

#include <string.h>

struct _VgpuBacking {
  gint refcount;
  gint readers;
  gint loans;
  struct iovec *iov;
  guint64 *starts; /* offset of iov[i] within the backing */
  guint n;
  guint64 size;
  VhuMemTable *mem; /* keeps the mappings alive */
  VgpuNotify *idle_notify;
  VgpuHostmem *hostmem; /* NULL: not charged */
  guint64 charged;
};

/* Each piece: its iovec and its start offset. */
#define PIECE_BYTES (sizeof(struct iovec) + sizeof(guint64))

GQuark
vgpu_backing_error_quark(void)
{
  return g_quark_from_static_string("vgpu-backing-error-quark");
}

guint64
vgpu_backing_charge_for(guint pieces)
{
  return sizeof(VgpuBacking) + (guint64)MAX(pieces, 1u) * PIECE_BYTES;
}

guint64
vgpu_backing_get_charge(const VgpuBacking *b)
{
  return b->charged;
}

/* Adds @v to the pieces (when @iov is not NULL) unless it continues the
 * last one; returns the new count. */
static guint
add_piece(struct iovec *iov, struct iovec *last, guint n, const struct iovec *v)
{
  if (n > 0 && (guint8 *)last->iov_base + last->iov_len == v->iov_base) {
    last->iov_len += v->iov_len;
    if (iov)
      iov[n - 1].iov_len += v->iov_len;
    return n;
  }
  *last = *v;
  if (iov)
    iov[n] = *v;
  return n + 1;
}

/* One pass over the entries: checks them and counts the merged pieces, or
 * (with @iov, sized by a first pass) fills them in.  Returns FALSE with
 * *bad_entry and @error set. */
static gboolean
translate(VhuMemTable *mem, const struct virtio_gpu_mem_entry *entries, guint n, struct iovec *iov,
          guint *pieces, guint64 *size, guint *bad_entry, GError **error)
{
  struct iovec last = { NULL, 0 };
  guint count = 0;

  *size = 0;
  for (guint i = 0; i < n; i++) {
    struct iovec tmp[VHU_MAX_MEM_SLOTS];
    int k;

    if (entries[i].length == 0)
      continue;
    k = mem ? vhu_mem_gpa_to_iov(mem, entries[i].addr, entries[i].length, tmp, G_N_ELEMENTS(tmp))
            : -1;
    if (k < 0) {
      *bad_entry = i;
      g_set_error_literal(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_UNMAPPED,
                          "not in guest memory");
      return FALSE;
    }
    if (!g_uint64_checked_add(size, *size, entries[i].length)) {
      *bad_entry = i;
      g_set_error_literal(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_SIZE, "backing too large");
      return FALSE;
    }
    for (int j = 0; j < k; j++)
      count = add_piece(iov, &last, count, &tmp[j]);
  }
  *pieces = count;
  return TRUE;
}

VgpuBacking *
vgpu_backing_new(VgpuHostmem *hostmem, VhuMemTable *mem, const struct virtio_gpu_mem_entry *entries,
                 guint n, guint *bad_entry, GError **error)
{
  VgpuBacking *b;
  guint64 size, charge;
  guint pieces, filled;

  /* Counted first, so that the list is charged before it is allocated. */
  if (!translate(mem, entries, n, NULL, &pieces, &size, bad_entry, error))
    return NULL;
  charge = vgpu_backing_charge_for(pieces);
  if (hostmem && !vgpu_hostmem_charge(hostmem, charge)) {
    *bad_entry = n;
    g_set_error(error, VGPU_BACKING_ERROR, VGPU_BACKING_ERROR_BUDGET,
                "%u pieces (%" G_GUINT64_FORMAT " bytes) exceed the host memory budget", pieces,
                charge);
    return NULL;
  }
  b = g_new0(VgpuBacking, 1);
  b->refcount = 1;
  b->n = pieces;
  b->size = size;
  b->iov = g_new(struct iovec, MAX(pieces, 1u));
  b->starts = g_new(guint64, MAX(pieces, 1u));
  b->hostmem = hostmem ? vgpu_hostmem_ref(hostmem) : NULL;
  b->charged = hostmem ? charge : 0;
  /* Same entries, same table: the same pieces. */
  translate(mem, entries, n, b->iov, &filled, &size, bad_entry, NULL);
  g_assert(filled == pieces);
  for (guint64 i = 0, off = 0; i < b->n; i++) {
    b->starts[i] = off;
    off += b->iov[i].iov_len;
  }
  b->mem = mem ? vhu_mem_table_ref(mem) : NULL;
  return b;
}

VgpuBacking *
vgpu_backing_ref(VgpuBacking *b)
{
  g_atomic_int_inc(&b->refcount);
  return b;
}

void
vgpu_backing_unref(VgpuBacking *b)
{
  if (!b || !g_atomic_int_dec_and_test(&b->refcount))
    return;
  g_warn_if_fail(g_atomic_int_get(&b->readers) == 0 && g_atomic_int_get(&b->loans) == 0);
  g_free(b->iov);
  g_free(b->starts);
  if (b->mem)
    vhu_mem_table_unref(b->mem);
  vgpu_notify_unref(b->idle_notify);
  if (b->hostmem) {
    vgpu_hostmem_credit(b->hostmem, b->charged);
    vgpu_hostmem_unref(b->hostmem);
  }
  g_free(b);
}

guint64
vgpu_backing_get_size(const VgpuBacking *b)
{
  return b->size;
}

/* Index of the last piece starting at or before @offset. */
static guint
find_piece(const VgpuBacking *b, guint64 offset)
{
  guint lo = 0, hi = b->n;

  while (hi - lo > 1) {
    guint mid = lo + (hi - lo) / 2;

    if (b->starts[mid] <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Calls @func for each host piece of [@offset, @offset + @len). */
static void
foreach_piece(const VgpuBacking *b, guint64 offset, gsize len,
              void (*func)(guint8 *p, gsize len, gpointer data), gpointer data)
{
  g_return_if_fail(offset <= b->size && len <= b->size - offset);
  for (guint i = find_piece(b, offset); i < b->n && len > 0; i++) {
    guint64 skip = offset > b->starts[i] ? offset - b->starts[i] : 0;
    gsize chunk;

    if (skip >= b->iov[i].iov_len)
      continue;
    chunk = MIN(len, b->iov[i].iov_len - skip);
    func((guint8 *)b->iov[i].iov_base + skip, chunk, data);
    len -= chunk;
    offset += chunk;
  }
}

static void
copy_piece(guint8 *p, gsize len, gpointer data)
{
  guint8 **dst = data;

  memcpy(*dst, p, len);
  *dst += len;
}

void
vgpu_backing_read(const VgpuBacking *b, guint64 offset, void *dst, gsize len)
{
  guint8 *d = dst;

  foreach_piece(b, offset, len, copy_piece, &d);
}

static void
iov_piece(guint8 *p, gsize len, gpointer data)
{
  struct iovec v = { p, len };

  g_array_append_val((GArray *)data, v);
}

void
vgpu_backing_append_iov(const VgpuBacking *b, guint64 offset, gsize len, GArray *iov)
{
  foreach_piece(b, offset, len, iov_piece, iov);
}

typedef struct {
  const VgpuBacking *backing;
  GArray *pieces;
  gboolean ok;
} FdPieces;

static void
fd_piece(guint8 *p, gsize len, gpointer data)
{
  FdPieces *fp = data;

  fp->ok = fp->ok && vhu_mem_host_to_fd(fp->backing->mem, p, len, fp->pieces);
}

gboolean
vgpu_backing_append_fd_pieces(const VgpuBacking *b, guint64 offset, gsize len, GArray *pieces)
{
  FdPieces fp = { b, pieces, b->mem != NULL || len == 0 };
  guint start = pieces->len;

  if (fp.ok)
    foreach_piece(b, offset, len, fd_piece, &fp);
  if (!fp.ok)
    g_array_set_size(pieces, start);
  return fp.ok;
}

gboolean
vgpu_backing_is_shared(const VgpuBacking *b)
{
  return g_atomic_int_get(&b->refcount) > 1;
}

void
vgpu_backing_set_idle_notify(VgpuBacking *b, VgpuNotify *notify)
{
  VgpuNotify *old = b->idle_notify;

  b->idle_notify = notify ? vgpu_notify_ref(notify) : NULL;
  vgpu_notify_unref(old);
}

void
vgpu_backing_begin_read(VgpuBacking *b)
{
  g_atomic_int_inc(&b->readers);
}

void
vgpu_backing_end_read(VgpuBacking *b)
{
  g_return_if_fail(g_atomic_int_get(&b->readers) > 0);
  if (g_atomic_int_dec_and_test(&b->readers) && b->idle_notify)
    vgpu_notify_fire(b->idle_notify);
}

gboolean
vgpu_backing_is_busy(VgpuBacking *b)
{
  return g_atomic_int_get(&b->readers) > 0;
}

void
vgpu_backing_begin_loan(VgpuBacking *b)
{
  g_atomic_int_inc(&b->loans);
}

void
vgpu_backing_end_loan(VgpuBacking *b)
{
  g_return_if_fail(g_atomic_int_get(&b->loans) > 0);
  if (g_atomic_int_dec_and_test(&b->loans) && b->idle_notify)
    vgpu_notify_fire(b->idle_notify);
}

gboolean
vgpu_backing_is_lent(VgpuBacking *b)
{
  return g_atomic_int_get(&b->loans) > 0;
}
