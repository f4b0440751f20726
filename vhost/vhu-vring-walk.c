/* vhu-vring-walk.c: walking a descriptor chain the guest wrote, every value
 * copied out once and checked; see vhu-vring.c for the memory rules. */
#include "vhu-vring-internal.h"

#include <gio/gio.h>
#include <string.h>

/* ---- pop --------------------------------------------------------------- */

/* Marks the ring broken and keeps why (for the backend's log line); the
 * caller fails with @error, which says the same. */
void
vhu_vring_break(VhuVring *vring, GError **error, const char *format, ...)
{
  va_list args;

  va_start(args, format);
  g_free(vring->broken_reason);
  vring->broken_reason = g_strdup_vprintf(format, args);
  va_end(args);
  vring->broken = TRUE;
  vring->broke_now = TRUE;
  g_set_error(error, VHU_VRING_ERROR, VHU_VRING_ERROR_BROKEN, "queue %u: %s", vring->index,
              vring->broken_reason);
}

static void
load_desc(const struct vring_desc *d, VhuDesc *out)
{
  out->addr = GUEST_LOAD(&d->addr);
  out->len = GUEST_LOAD(&d->len);
  out->flags = GUEST_LOAD(&d->flags);
  out->next = GUEST_LOAD(&d->next);
}

/* Copies [gpa, gpa+len) out of guest memory; FALSE if a byte is unmapped. */
static gboolean
copy_from_guest(const VhuMemTable *mem, guint64 gpa, guint64 len, void *dst)
{
  guint8 *out = dst;

  while (len > 0) {
    guint64 chunk = len;
    const void *src = vhu_mem_gpa_to_host(mem, gpa, &chunk);

    if (src == NULL)
      return FALSE;
    memcpy(out, src, chunk);
    out += chunk;
    gpa += chunk;
    len -= chunk;
  }
  return TRUE;
}

static gboolean
range_mapped(const VhuMemTable *mem, guint64 gpa, guint64 len)
{
  guint64 end;

  if (!g_uint64_checked_add(&end, gpa, len))
    return FALSE;
  while (gpa < end) {
    guint64 chunk = end - gpa;

    if (vhu_mem_gpa_to_host(mem, gpa, &chunk) == NULL)
      return FALSE;
    gpa += chunk;
  }
  return TRUE;
}

/* Where a chain walk is, to name the culprit in the reason. */
typedef struct {
  guint16 head;
  guint idx;         /* descriptor being looked at */
  gboolean indirect; /* idx is an entry of the head's indirect table */
  guint table_size;  /* entries of the table idx is in */
} VhuWalk;

/* "descriptor 5", "descriptor 7 (chain of head 5)" or "indirect descriptor
 * 2 (head 5)"; @buf must hold 64 bytes. */
static const char *
walk_where(const VhuWalk *w, char *buf)
{
  if (w->indirect)
    g_snprintf(buf, 64, "indirect descriptor %u (head %u)", w->idx, w->head);
  else if (w->idx == w->head)
    g_snprintf(buf, 64, "descriptor %u", w->idx);
  else
    g_snprintf(buf, 64, "descriptor %u (chain of head %u)", w->idx, w->head);
  return buf;
}

typedef struct {
  guint n_iov;
  guint out_num;
  gsize out_len;
  gsize in_len;
  gboolean writable_seen;
} VhuGather;

/* Adds one (already copied) descriptor's buffer to @g. */
static gboolean
gather_desc(VhuVring *vring, VhuGather *g, const VhuDesc *d, const VhuWalk *w, GError **error)
{
  gboolean writable = (d->flags & VRING_DESC_F_WRITE) != 0;
  gsize *total = writable ? &g->in_len : &g->out_len;
  char where[64];
  int n;

  if (d->len == 0)
    return TRUE;
  if (!writable && g->writable_seen) {
    vhu_vring_break(vring, error, "%s is device-readable but follows a device-writable one",
                    walk_where(w, where));
    return FALSE;
  }
  n = vhu_mem_gpa_to_iov(vring->mem, d->addr, d->len, vring->iov + g->n_iov,
                         VHU_ELEM_MAX_IOV - g->n_iov);
  if (n < 0 && !range_mapped(vring->mem, d->addr, d->len)) {
    vhu_vring_break(vring, error, "%s: buffer 0x%" G_GINT64_MODIFIER "x+%u is not in guest memory",
                    walk_where(w, where), d->addr, d->len);
    return FALSE;
  }
  if (n < 0) {
    vhu_vring_break(vring, error, "head %u: chain needs more than %u memory segments", w->head,
                    VHU_ELEM_MAX_IOV);
    return FALSE;
  }
  if (!g_size_checked_add(total, *total, d->len)) {
    vhu_vring_break(vring, error, "head %u: chain length overflows", w->head);
    return FALSE;
  }
  g->n_iov += n;
  if (writable)
    g->writable_seen = TRUE;
  else
    g->out_num += n;
  return TRUE;
}

/* Copies the indirect table @d points at into the scratch table. */
static gboolean
load_indirect(VhuVring *vring, const VhuDesc *d, const VhuWalk *w, guint *n_entries, GError **error)
{
  char where[64];

  if (!has_feature(vring, VIRTIO_RING_F_INDIRECT_DESC)) {
    vhu_vring_break(vring, error, "%s is indirect, but INDIRECT_DESC was not negotiated",
                    walk_where(w, where));
    return FALSE;
  }
  if (d->flags & VRING_DESC_F_NEXT) {
    vhu_vring_break(vring, error, "%s has both INDIRECT and NEXT", walk_where(w, where));
    return FALSE;
  }
  if (d->len == 0 || d->len % sizeof(struct vring_desc) != 0
      || d->len / sizeof(struct vring_desc) > VHU_INDIRECT_MAX) {
    vhu_vring_break(vring, error,
                    "%s: indirect table of %u bytes (needs 16 to %u bytes, a multiple of 16)",
                    walk_where(w, where), d->len, VHU_INDIRECT_MAX * 16);
    return FALSE;
  }
  if (!copy_from_guest(vring->mem, d->addr, d->len, vring->indirect)) {
    vhu_vring_break(vring, error,
                    "%s: indirect table 0x%" G_GINT64_MODIFIER "x+%u is not in guest memory",
                    walk_where(w, where), d->addr, d->len);
    return FALSE;
  }
  *n_entries = d->len / sizeof(struct vring_desc);
  return TRUE;
}

/* Walks the chain of @head (through at most one indirect table) into an
 * element.  NULL with the ring broken on any violation. */
VhuElemPriv *
vhu_vring_gather_chain(VhuVring *vring, guint16 head, GError **error)
{
  const struct vring_desc *table = vring->desc;
  VhuWalk w = { .head = head, .idx = head, .table_size = vring->num };
  guint count = 0;
  VhuGather g = { 0 };
  VhuElemPriv *priv;
  char where[64];

  for (;;) {
    VhuDesc d;

    if (count++ >= w.table_size) {
      if (w.indirect)
        vhu_vring_break(vring, error,
                        "head %u: chain longer than its indirect table of %u entries (a loop)",
                        head, w.table_size);
      else
        vhu_vring_break(vring, error, "head %u: chain longer than the ring size %u (a loop)", head,
                        w.table_size);
      return NULL;
    }
    load_desc(&table[w.idx], &d);
    if (d.flags & VRING_DESC_F_INDIRECT) {
      if (w.indirect) {
        vhu_vring_break(vring, error, "%s is indirect inside an indirect table (nested)",
                        walk_where(&w, where));
        return NULL;
      }
      if (!load_indirect(vring, &d, &w, &w.table_size, error))
        return NULL;
      table = vring->indirect;
      w.indirect = TRUE;
      w.idx = 0;
      count = 0;
      continue;
    }
    if (!gather_desc(vring, &g, &d, &w, error))
      return NULL;
    if (!(d.flags & VRING_DESC_F_NEXT))
      break;
    if (d.next >= w.table_size) {
      if (w.indirect)
        vhu_vring_break(vring, error, "%s chains to %u, beyond its indirect table of %u entries",
                        walk_where(&w, where), d.next, w.table_size);
      else
        vhu_vring_break(vring, error, "%s chains to %u, beyond ring size %u", walk_where(&w, where),
                        d.next, w.table_size);
      return NULL;
    }
    w.idx = d.next;
  }

  priv = g_malloc(sizeof(VhuElemPriv) + g.n_iov * sizeof(struct iovec));
  memcpy(priv->iov, vring->iov, g.n_iov * sizeof(struct iovec));
  priv->elem = (VhuElem){
    .head = head,
    .out_num = g.out_num,
    .in_num = g.n_iov - g.out_num,
    .out_sg = g.out_num ? priv->iov : NULL,
    .in_sg = g.n_iov > g.out_num ? priv->iov + g.out_num : NULL,
    .out_len = g.out_len,
    .in_len = g.in_len,
    .mem = vhu_mem_table_ref(vring->mem),
    .generation = vring->generation,
  };
  priv->from_avail = FALSE;
  priv->avail_pos = 0;
  return priv;
}
