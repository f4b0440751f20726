/* test-vring.c: the device side of split rings against a small driver that
 * lays out descriptors, avail and used rings in memfd memory, the way a
 * guest would. */
#include "vhu-vring-private.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <linux/virtio_ring.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

/* Guest memory: region 1 (rings and buffers) and, right after it in gpa,
 * region 2 from another memfd with an unrelated uva. */
#define R1_GPA    0x100000u
#define R1_SIZE   0x100000u
#define R1_OFFSET 0x1000u
#define R1_UVA    G_GUINT64_CONSTANT(0x7f1200000000)
#define R2_GPA    (R1_GPA + R1_SIZE)
#define R2_SIZE   0x40000u
#define R2_UVA    G_GUINT64_CONSTANT(0x7f3400000000)
#define GAP_GPA   0x40000000u

#define DESC_GPA  R1_GPA
#define AVAIL_GPA (R1_GPA + 0x4000u)
#define USED_GPA  (R1_GPA + 0x5000u)
#define DATA_GPA  (R1_GPA + 0x8000u)

#define F_NOTIFY_ON_EMPTY (G_GUINT64_CONSTANT(1) << VHU_F_NOTIFY_ON_EMPTY)
#define F_INDIRECT        (G_GUINT64_CONSTANT(1) << VIRTIO_RING_F_INDIRECT_DESC)
#define F_EVENT_IDX       (G_GUINT64_CONSTANT(1) << VIRTIO_RING_F_EVENT_IDX)

typedef struct {
  guint64 gpa;
  guint32 len;
  gboolean write;
} Buf;

typedef struct {
  int fd1, fd2;
  guint8 *map1, *map2; /* our own mappings of the memfds */
  VhuMemTable *mem;
  VhuVring *vring;
  guint num;
  guint64 features;
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
  guint16 avail_idx; /* next index the driver publishes */
  guint next_desc;   /* descriptor slots handed out round robin */
  guint64 data_next; /* bump allocator for buffers and indirect tables */
  int call_fd;       /* our end of the call eventfd */
} Driver;

static guint64
uva_of(guint64 gpa)
{
  return gpa - R1_GPA + R1_UVA;
}

/* Our view of guest memory at @gpa (the range must be in one region). */
static void *
gpa_ptr(Driver *d, guint64 gpa, gsize len)
{
  if (gpa >= R1_GPA && gpa + len <= R1_GPA + R1_SIZE)
    return d->map1 + R1_OFFSET + (gpa - R1_GPA);
  g_assert_true(gpa >= R2_GPA && gpa + len <= R2_GPA + R2_SIZE);
  return d->map2 + (gpa - R2_GPA);
}

static int
make_memfd(gsize size, guint8 **map)
{
  int fd = memfd_create("test-vring", MFD_CLOEXEC);

  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, size), ==, 0);
  *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  g_assert_true(*map != MAP_FAILED);
  return fd;
}

static VhuMemTable *
build_mem(Driver *d)
{
  VhuMemRegionDesc r1 = { R1_GPA, R1_SIZE, R1_UVA, R1_OFFSET };
  VhuMemRegionDesc r2 = { R2_GPA, R2_SIZE, R2_UVA, 0 };
  g_autoptr(GError) error = NULL;
  g_autoptr(VhuMemTable) empty = vhu_mem_table_new();
  g_autoptr(VhuMemTable) one = vhu_mem_table_add(empty, &r1, d->fd1, 8, &error);
  VhuMemTable *two;

  g_assert_no_error(error);
  two = vhu_mem_table_add(one, &r2, d->fd2, 8, &error);
  g_assert_no_error(error);
  return two;
}

/* Configures @d->vring the way the backend does for a frontend. */
static void
configure_vring(Driver *d, guint16 base)
{
  VhuVringAddr addr = {
    .index = 0,
    .desc_user_addr = uva_of(DESC_GPA),
    .used_user_addr = uva_of(USED_GPA),
    .avail_user_addr = uva_of(AVAIL_GPA),
  };
  g_autoptr(GError) error = NULL;
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

  g_assert_cmpint(efd, >=, 0);
  d->vring = vhu_vring_new(0);
  g_assert_true(vhu_vring_set_num(d->vring, d->num, &error));
  g_assert_true(vhu_vring_set_base(d->vring, base, &error));
  g_assert_true(vhu_vring_set_mem(d->vring, d->mem, &error));
  g_assert_true(vhu_vring_set_addr(d->vring, &addr, &error));
  g_assert_no_error(error);
  vhu_vring_set_features(d->vring, d->features);
  if (d->call_fd >= 0)
    close(d->call_fd);
  d->call_fd = efd;
  vhu_vring_set_call_fd(d->vring, fcntl(efd, F_DUPFD_CLOEXEC, 0));
}

static void
start_vring(Driver *d)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(vhu_vring_start(d->vring, &error));
  g_assert_no_error(error);
  vhu_vring_set_enabled(d->vring, TRUE);
}

static Driver *
driver_new_base(guint num, guint64 features, guint16 base, gboolean start)
{
  Driver *d = g_new0(Driver, 1);

  d->num = num;
  d->features = features;
  d->call_fd = -1;
  d->fd1 = make_memfd(R1_OFFSET + R1_SIZE, &d->map1);
  d->fd2 = make_memfd(R2_SIZE, &d->map2);
  d->mem = build_mem(d);
  d->desc = gpa_ptr(d, DESC_GPA, 16 * num);
  d->avail = gpa_ptr(d, AVAIL_GPA, 6 + 2 * num);
  d->used = gpa_ptr(d, USED_GPA, 6 + 8 * num);
  d->data_next = DATA_GPA;
  /* A guest resuming at @base has used and avail there too. */
  d->avail_idx = base;
  d->avail->idx = base;
  d->used->idx = base;
  configure_vring(d, base);
  if (start)
    start_vring(d);
  return d;
}

static Driver *
driver_new(guint num, guint64 features)
{
  return driver_new_base(num, features, 0, TRUE);
}

static void
driver_free(Driver *d)
{
  vhu_vring_free(d->vring);
  vhu_mem_table_unref(d->mem);
  munmap(d->map1, R1_OFFSET + R1_SIZE);
  munmap(d->map2, R2_SIZE);
  close(d->fd1);
  close(d->fd2);
  close(d->call_fd);
  g_free(d);
}

/* A guest buffer of @len bytes filled with @fill. */
static guint64
alloc_buf(Driver *d, gsize len, guint8 fill)
{
  guint64 gpa = d->data_next;

  d->data_next = (d->data_next + len + 15) & ~G_GUINT64_CONSTANT(15);
  g_assert_cmpuint(d->data_next, <=, R1_GPA + R1_SIZE);
  memset(gpa_ptr(d, gpa, len), fill, len);
  return gpa;
}

static void
write_desc(struct vring_desc *table, guint i, guint64 addr, guint32 len, guint16 flags,
           guint16 next)
{
  table[i].addr = addr;
  table[i].len = len;
  table[i].flags = flags;
  table[i].next = next;
}

/* Writes @bufs as a chain into @table using slots @slots[]; returns the head. */
static void
write_chain(struct vring_desc *table, const guint *slots, const Buf *bufs, guint n)
{
  for (guint i = 0; i < n; i++) {
    guint16 flags = (bufs[i].write ? VRING_DESC_F_WRITE : 0) | (i + 1 < n ? VRING_DESC_F_NEXT : 0);

    write_desc(table, slots[i], bufs[i].gpa, bufs[i].len, flags, i + 1 < n ? slots[i + 1] : 0);
  }
}

static guint
take_slot(Driver *d)
{
  return d->next_desc++ % d->num;
}

static guint16
add_chain(Driver *d, const Buf *bufs, guint n)
{
  guint slots[64];

  g_assert_cmpuint(n, <=, G_N_ELEMENTS(slots));
  for (guint i = 0; i < n; i++)
    slots[i] = take_slot(d);
  write_chain(d->desc, slots, bufs, n);
  return slots[0];
}

/* An indirect table in guest memory holding @bufs, referenced by one slot. */
static guint16
add_indirect(Driver *d, const Buf *bufs, guint n)
{
  guint64 table_gpa = alloc_buf(d, 16 * n, 0);
  guint slots[64];
  guint head = take_slot(d);

  g_assert_cmpuint(n, <=, G_N_ELEMENTS(slots));
  for (guint i = 0; i < n; i++)
    slots[i] = i;
  write_chain(gpa_ptr(d, table_gpa, 16 * n), slots, bufs, n);
  write_desc(d->desc, head, table_gpa, 16 * n, VRING_DESC_F_INDIRECT, 0);
  return head;
}

static void
publish(Driver *d, guint16 head)
{
  d->avail->ring[d->avail_idx % d->num] = head;
  d->avail_idx++;
  __atomic_store_n(&d->avail->idx, d->avail_idx, __ATOMIC_RELEASE);
}

/* One request: @out_len readable bytes of @fill, @in_len writable ones. */
static guint16
add_simple(Driver *d, gsize out_len, gsize in_len, guint8 fill)
{
  Buf bufs[2];
  guint n = 0;
  guint16 head;

  if (out_len)
    bufs[n++] = (Buf){ alloc_buf(d, out_len, fill), out_len, FALSE };
  if (in_len)
    bufs[n++] = (Buf){ alloc_buf(d, in_len, 0), in_len, TRUE };
  head = add_chain(d, bufs, n);
  publish(d, head);
  return head;
}

static guint64
call_count(Driver *d)
{
  guint64 v = 0;

  if (read(d->call_fd, &v, sizeof v) != sizeof v) {
    g_assert_cmpint(errno, ==, EAGAIN);
    return 0;
  }
  return v;
}

static VhuElem *
pop_ok(Driver *d)
{
  g_autoptr(GError) error = NULL;
  VhuElem *elem = vhu_vring_pop(d->vring, &error);

  g_assert_no_error(error);
  g_assert_nonnull(elem);
  return elem;
}

static void
pop_empty(Driver *d)
{
  g_autoptr(GError) error = NULL;

  g_assert_null(vhu_vring_pop(d->vring, &error));
  g_assert_no_error(error);
}

static guint16
used_idx(Driver *d)
{
  return __atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE);
}

static struct vring_used_elem
used_elem(Driver *d, guint16 idx)
{
  return d->used->ring[idx % d->num];
}

static guint16
avail_event(Driver *d)
{
  return *(guint16 *)&d->used->ring[d->num];
}

/* ---- basic requests ---------------------------------------------------- */

static void
test_simple_chain(void)
{
  Driver *d = driver_new(8, 0);
  guint16 head = add_simple(d, 16, 32, 0x5a);
  VhuElem *elem = pop_ok(d);
  guint8 buf[16];
  const char reply[] = "hello";

  g_assert_cmpuint(elem->head, ==, head);
  g_assert_cmpuint(elem->out_num, ==, 1);
  g_assert_cmpuint(elem->in_num, ==, 1);
  g_assert_cmpuint(elem->out_len, ==, 16);
  g_assert_cmpuint(elem->in_len, ==, 32);
  g_assert_cmpuint(vhu_elem_read(elem, 0, buf, sizeof buf), ==, 16);
  for (guint i = 0; i < 16; i++)
    g_assert_cmpuint(buf[i], ==, 0x5a);
  g_assert_cmpuint(vhu_elem_write(elem, 0, reply, sizeof reply), ==, sizeof reply);
  g_assert_cmpstr(elem->in_sg[0].iov_base, ==, "hello");
  pop_empty(d);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 1);

  vhu_vring_push(d->vring, elem, sizeof reply);
  g_assert_cmpuint(used_idx(d), ==, 1);
  g_assert_cmpuint(used_elem(d, 0).id, ==, head);
  g_assert_cmpuint(used_elem(d, 0).len, ==, sizeof reply);
  g_assert_true(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 1);
  driver_free(d);
}

static void
test_readable_writable_split(void)
{
  Driver *d = driver_new(8, 0);
  Buf bufs[] = {
    { alloc_buf(d, 10, 1), 10, FALSE }, { alloc_buf(d, 20, 2), 20, FALSE },
    { alloc_buf(d, 5, 0), 5, TRUE },    { alloc_buf(d, 0, 0), 0, TRUE }, /* harmless */
    { alloc_buf(d, 7, 0), 7, TRUE },    { alloc_buf(d, 9, 0), 9, TRUE },
  };
  guint16 head = add_chain(d, bufs, G_N_ELEMENTS(bufs));
  guint8 out[30];
  guint8 in[21];
  VhuElem *elem;

  publish(d, head);
  elem = pop_ok(d);
  g_assert_cmpuint(elem->out_num, ==, 2);
  g_assert_cmpuint(elem->in_num, ==, 3);
  g_assert_cmpuint(elem->out_len, ==, 30);
  g_assert_cmpuint(elem->in_len, ==, 21);
  g_assert_cmpuint(vhu_elem_read(elem, 0, out, 40), ==, 30);
  g_assert_cmpuint(out[9], ==, 1);
  g_assert_cmpuint(out[10], ==, 2);
  memset(in, 0xee, sizeof in);
  g_assert_cmpuint(vhu_elem_write(elem, 3, in, sizeof in), ==, 18);
  g_assert_cmpuint(*(guint8 *)gpa_ptr(d, bufs[2].gpa + 2, 1), ==, 0);
  g_assert_cmpuint(*(guint8 *)gpa_ptr(d, bufs[2].gpa + 3, 1), ==, 0xee);
  g_assert_cmpuint(*(guint8 *)gpa_ptr(d, bufs[5].gpa + 8, 1), ==, 0xee);
  /* A claimed length beyond the writable bytes is clamped. */
  vhu_vring_push(d->vring, elem, 1000);
  g_assert_cmpuint(used_elem(d, 0).len, ==, 21);
  driver_free(d);
}

static void
test_indirect(void)
{
  Driver *d = driver_new(4, F_INDIRECT);
  Buf bufs[] = {
    { alloc_buf(d, 8, 0x11), 8, FALSE },
    { alloc_buf(d, 8, 0x22), 8, FALSE },
    { alloc_buf(d, 64, 0), 64, TRUE },
  };
  guint16 head = add_indirect(d, bufs, G_N_ELEMENTS(bufs));
  guint8 out[16];
  VhuElem *elem;

  publish(d, head);
  elem = pop_ok(d);
  g_assert_cmpuint(elem->head, ==, head);
  g_assert_cmpuint(elem->out_num, ==, 2);
  g_assert_cmpuint(elem->in_num, ==, 1);
  g_assert_cmpuint(elem->in_len, ==, 64);
  g_assert_cmpuint(vhu_elem_read(elem, 0, out, sizeof out), ==, 16);
  g_assert_cmpuint(out[7], ==, 0x11);
  g_assert_cmpuint(out[8], ==, 0x22);
  vhu_vring_push(d->vring, elem, 4);

  /* Direct descriptors first, then an indirect table ends the chain. */
  {
    guint64 table = alloc_buf(d, 32, 0);
    struct vring_desc *t = gpa_ptr(d, table, 32);
    guint a = take_slot(d), b = take_slot(d);

    write_desc(d->desc, a, alloc_buf(d, 4, 0x33), 4, VRING_DESC_F_NEXT, b);
    write_desc(d->desc, b, table, 32, VRING_DESC_F_INDIRECT, 0);
    write_desc(t, 0, alloc_buf(d, 4, 0x44), 4, VRING_DESC_F_NEXT, 1);
    write_desc(t, 1, alloc_buf(d, 4, 0), 4, VRING_DESC_F_WRITE, 0);
    publish(d, a);
    elem = pop_ok(d);
    g_assert_cmpuint(elem->out_num, ==, 2);
    g_assert_cmpuint(elem->in_num, ==, 1);
    vhu_vring_push(d->vring, elem, 0);
  }

  /* The largest table: 1024 entries, more than the ring size. */
  {
    guint64 table = alloc_buf(d, 16 * 1024, 0);
    struct vring_desc *t = gpa_ptr(d, table, 16 * 1024);
    guint64 data = alloc_buf(d, 1024, 0x55);
    guint h = take_slot(d);

    for (guint i = 0; i < 1024; i++)
      write_desc(t, i, data + i, 1, i < 1023 ? VRING_DESC_F_NEXT : 0, i + 1);
    write_desc(d->desc, h, table, 16 * 1024, VRING_DESC_F_INDIRECT, 0);
    publish(d, h);
    elem = pop_ok(d);
    g_assert_cmpuint(elem->out_num, ==, 1024);
    g_assert_cmpuint(elem->out_len, ==, 1024);
    vhu_vring_push(d->vring, elem, 0);
  }
  driver_free(d);
}

static void
test_span_regions(void)
{
  Driver *d = driver_new(4, F_INDIRECT);
  guint8 *tail = gpa_ptr(d, R2_GPA - 6, 6);
  guint8 *head_of_r2 = gpa_ptr(d, R2_GPA, 10);
  Buf bufs[] = { { R2_GPA - 6, 16, FALSE } };
  guint8 out[16];
  VhuElem *elem;

  memset(tail, 0xaa, 6);
  memset(head_of_r2, 0xbb, 10);
  publish(d, add_chain(d, bufs, 1));
  elem = pop_ok(d);
  g_assert_cmpuint(elem->out_num, ==, 2);
  g_assert_cmpuint(elem->out_sg[0].iov_len, ==, 6);
  g_assert_cmpuint(elem->out_sg[1].iov_len, ==, 10);
  g_assert_cmpuint(vhu_elem_read(elem, 0, out, sizeof out), ==, 16);
  g_assert_cmpuint(out[5], ==, 0xaa);
  g_assert_cmpuint(out[6], ==, 0xbb);
  vhu_vring_push(d->vring, elem, 0);

  /* An indirect table that itself crosses the boundary. */
  {
    struct vring_desc table[2];
    guint h = take_slot(d);

    write_desc(table, 0, R2_GPA + 0x100, 4, VRING_DESC_F_NEXT, 1);
    write_desc(table, 1, R2_GPA + 0x200, 8, VRING_DESC_F_WRITE, 0);
    memcpy(gpa_ptr(d, R2_GPA - 8, 8), table, 8);
    memcpy(gpa_ptr(d, R2_GPA, 24), (guint8 *)table + 8, 24);
    write_desc(d->desc, h, R2_GPA - 8, 32, VRING_DESC_F_INDIRECT, 0);
    publish(d, h);
    elem = pop_ok(d);
    g_assert_cmpuint(elem->out_len, ==, 4);
    g_assert_cmpuint(elem->in_len, ==, 8);
    vhu_vring_push(d->vring, elem, 8);
  }
  driver_free(d);
}

/* ---- notifications ----------------------------------------------------- */

static void
complete_one(Driver *d)
{
  vhu_vring_push(d->vring, pop_ok(d), 0);
}

static void
test_no_interrupt(void)
{
  Driver *d = driver_new(8, 0);

  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_true(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 1);

  d->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_false(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 0);

  d->avail->flags = 0;
  g_assert_true(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 1);
  driver_free(d);
}

static void
test_notify_on_empty(void)
{
  Driver *d = driver_new(8, F_NOTIFY_ON_EMPTY);
  VhuElem *a, *b;

  d->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  a = pop_ok(d);
  b = pop_ok(d);
  vhu_vring_push(d->vring, a, 0);
  g_assert_false(vhu_vring_notify(d->vring)); /* b still in use */
  vhu_vring_push(d->vring, b, 0);
  g_assert_true(vhu_vring_notify(d->vring)); /* empty now */
  g_assert_cmpuint(call_count(d), ==, 1);

  /* Not empty: a request is waiting. */
  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_false(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 0);
  driver_free(d);
}

static void
test_event_idx(void)
{
  Driver *d = driver_new(8, F_EVENT_IDX);
  guint16 *used_event = &d->avail->ring[d->num];

  /* NO_INTERRUPT is ignored with EVENT_IDX. */
  d->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
  *used_event = 0;
  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_cmpuint(avail_event(d), ==, 1);   /* how far we read */
  g_assert_true(vhu_vring_notify(d->vring)); /* used 0 -> 1 crosses 0 */
  g_assert_cmpuint(call_count(d), ==, 1);

  /* The guest wants to hear when entry 2 was used, i.e. at used idx 3. */
  *used_event = 2;
  complete_one(d);
  g_assert_cmpuint(avail_event(d), ==, 2);
  g_assert_false(vhu_vring_notify(d->vring)); /* used 2 */
  g_assert_cmpuint(call_count(d), ==, 0);
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_true(vhu_vring_notify(d->vring)); /* used 3 */
  g_assert_cmpuint(call_count(d), ==, 1);
  g_assert_false(vhu_vring_notify(d->vring)); /* nothing new */

  /* Two completions batched, the event in between. */
  *used_event = 3;
  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  complete_one(d);
  complete_one(d);
  g_assert_true(vhu_vring_notify(d->vring));
  g_assert_cmpuint(call_count(d), ==, 1);
  /* An event already passed does not fire again. */
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_false(vhu_vring_notify(d->vring));
  driver_free(d);
}

static void
test_set_notification(void)
{
  Driver *d = driver_new(8, 0);

  g_assert_false(vhu_vring_set_notification(d->vring, FALSE));
  g_assert_cmpuint(d->used->flags & VRING_USED_F_NO_NOTIFY, ==, VRING_USED_F_NO_NOTIFY);
  g_assert_false(vhu_vring_set_notification(d->vring, TRUE));
  g_assert_cmpuint(d->used->flags, ==, 0);

  /* The race: a request arrives while the device polls without kicks. */
  vhu_vring_set_notification(d->vring, FALSE);
  add_simple(d, 4, 0, 0);
  g_assert_true(vhu_vring_set_notification(d->vring, TRUE));
  complete_one(d);
  g_assert_false(vhu_vring_set_notification(d->vring, TRUE));
  driver_free(d);

  d = driver_new(8, F_EVENT_IDX);
  g_assert_cmpuint(avail_event(d), ==, 0);
  vhu_vring_set_notification(d->vring, FALSE);
  add_simple(d, 4, 0, 0);
  complete_one(d);
  g_assert_cmpuint(avail_event(d), ==, 0); /* polling: no kick wanted */
  add_simple(d, 4, 0, 0);
  g_assert_true(vhu_vring_set_notification(d->vring, TRUE));
  g_assert_cmpuint(avail_event(d), ==, 1);
  complete_one(d);
  g_assert_cmpuint(avail_event(d), ==, 2);
  g_assert_false(vhu_vring_set_notification(d->vring, TRUE));
  driver_free(d);
}

/* ---- ordering, unpop, stop -------------------------------------------- */

static void
test_wrap_around(void)
{
  Driver *d = driver_new_base(4, F_EVENT_IDX, 65530, TRUE);
  guint16 expect_used = 65530;

  for (guint round = 0; round < 20; round++) {
    guint16 h1 = add_simple(d, 4, 4, round);
    guint16 h2 = add_simple(d, 4, 4, round);
    VhuElem *e1 = pop_ok(d);
    VhuElem *e2 = pop_ok(d);

    g_assert_cmpuint(e1->head, ==, h1);
    g_assert_cmpuint(e2->head, ==, h2);
    pop_empty(d);
    g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, (guint16)(expect_used + 2));
    g_assert_cmpuint(avail_event(d), ==, (guint16)(expect_used + 2));
    /* Out of order completion. */
    vhu_vring_push(d->vring, e2, 2);
    vhu_vring_push(d->vring, e1, 1);
    g_assert_cmpuint(used_elem(d, expect_used).id, ==, h2);
    g_assert_cmpuint(used_elem(d, expect_used).len, ==, 2);
    g_assert_cmpuint(used_elem(d, expect_used + 1).id, ==, h1);
    expect_used += 2;
    g_assert_cmpuint(used_idx(d), ==, expect_used);
  }
  g_assert_cmpuint(expect_used, <, 65530);
  driver_free(d);
}

static void
test_unpop(void)
{
  Driver *d = driver_new(8, 0);
  guint16 ha = add_simple(d, 4, 0, 0);
  guint16 hb = add_simple(d, 4, 0, 0);
  VhuElem *a, *b;

  /* Stack order rewinds the avail index. */
  a = pop_ok(d);
  vhu_vring_unpop(d->vring, a);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 0);
  a = pop_ok(d);
  b = pop_ok(d);
  vhu_vring_unpop(d->vring, a);
  vhu_vring_unpop(d->vring, b);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 0);
  a = pop_ok(d);
  g_assert_cmpuint(a->head, ==, ha);
  b = pop_ok(d);
  g_assert_cmpuint(b->head, ==, hb);

  /* Out of order: a comes back first, the avail index stays. */
  vhu_vring_unpop(d->vring, a);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 2);
  a = pop_ok(d);
  g_assert_cmpuint(a->head, ==, ha);
  pop_empty(d);
  vhu_vring_push(d->vring, b, 0);
  vhu_vring_push(d->vring, a, 0);
  g_assert_cmpuint(used_idx(d), ==, 2);
  g_assert_cmpuint(used_elem(d, 0).id, ==, hb);
  g_assert_cmpuint(used_elem(d, 1).id, ==, ha);
  driver_free(d);
}

static void
test_stale_push(void)
{
  Driver *d = driver_new(8, 0);
  VhuElem *a, *b, *c;

  add_simple(d, 4, 4, 0);
  add_simple(d, 4, 4, 0);
  add_simple(d, 4, 4, 0);
  a = pop_ok(d);
  c = pop_ok(d);
  vhu_vring_stop(d->vring);
  g_assert_false(vhu_vring_is_started(d->vring));
  pop_empty(d);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 2);
  vhu_vring_push(d->vring, c, 4);
  g_assert_cmpuint(used_idx(d), ==, 0);
  g_assert_false(vhu_vring_notify(d->vring));

  /* Restarted: an element from before the stop is still stale. */
  start_vring(d);
  vhu_vring_push(d->vring, a, 4);
  g_assert_cmpuint(used_idx(d), ==, 0);
  b = pop_ok(d);
  g_assert_cmpuint(b->head, ==, 4);
  vhu_vring_reset(d->vring);
  vhu_vring_complete(d->vring, b, 4);
  g_assert_cmpuint(used_idx(d), ==, 0);
  g_assert_cmpuint(call_count(d), ==, 0);
  g_assert_false(vhu_vring_is_started(d->vring));
  g_assert_false(vhu_vring_is_enabled(d->vring));
  g_assert_cmpuint(vhu_vring_size(d->vring), ==, 0);
  driver_free(d);
}

static void
test_disabled_and_mem_change(void)
{
  Driver *d = driver_new(8, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(VhuMemTable) only_r2 = NULL;
  VhuMemRegionDesc r1 = { R1_GPA, R1_SIZE, R1_UVA, R1_OFFSET };
  VhuElem *a;
  guint8 out[4];

  add_simple(d, 4, 0, 0x77);
  vhu_vring_set_enabled(d->vring, FALSE);
  pop_empty(d);
  vhu_vring_set_enabled(d->vring, TRUE);
  a = pop_ok(d);

  /* The table changes under a popped request: it keeps its mapping. */
  only_r2 = vhu_mem_table_remove(d->mem, &r1, &error);
  g_assert_no_error(error);
  vhu_mem_table_unref(d->mem);
  d->mem = NULL;
  g_assert_false(vhu_vring_set_mem(d->vring, only_r2, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_cmpuint(vhu_elem_read(a, 0, out, 4), ==, 4);
  g_assert_cmpuint(out[0], ==, 0x77);
  pop_empty(d);
  /* Back with the rings mapped, the completion goes through. */
  d->mem = build_mem(d);
  g_assert_true(vhu_vring_set_mem(d->vring, d->mem, &error));
  g_assert_no_error(error);
  vhu_vring_push(d->vring, a, 0);
  g_assert_cmpuint(used_idx(d), ==, 1);
  driver_free(d);
}

/* ---- configuration ----------------------------------------------------- */

static void
test_config_errors(void)
{
  Driver *d = driver_new_base(8, 0, 0, FALSE);
  VhuVring *v;
  g_autoptr(GError) error = NULL;
  static const guint bad_nums[] = { 0, 3, 6, 1000, 2048 };
  VhuVringAddr addr = {
    .desc_user_addr = uva_of(DESC_GPA),
    .used_user_addr = uva_of(USED_GPA),
    .avail_user_addr = uva_of(AVAIL_GPA),
  };
  int efd;

  for (guint i = 0; i < G_N_ELEMENTS(bad_nums); i++) {
    g_assert_false(vhu_vring_set_num(d->vring, bad_nums[i], &error));
    g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
  }
  g_assert_true(vhu_vring_set_num(d->vring, 1, &error));
  g_assert_true(vhu_vring_set_num(d->vring, 1024, &error));
  g_assert_true(vhu_vring_set_num(d->vring, 8, &error));
  g_assert_false(vhu_vring_set_base(d->vring, 65536, &error));
  g_clear_error(&error);

  /* Misaligned rings. */
  addr.desc_user_addr += 8;
  g_assert_false(vhu_vring_set_addr(d->vring, &addr, &error));
  g_clear_error(&error);
  addr.desc_user_addr -= 8;
  addr.avail_user_addr += 1;
  g_assert_false(vhu_vring_set_addr(d->vring, &addr, &error));
  g_clear_error(&error);
  addr.avail_user_addr -= 1;
  addr.used_user_addr += 2;
  g_assert_false(vhu_vring_set_addr(d->vring, &addr, &error));
  g_clear_error(&error);
  addr.used_user_addr -= 2;

  /* The used ring (with avail_event) must be inside one region. */
  addr.used_user_addr = R1_UVA + R1_SIZE - (4 + 8 * 8);
  g_assert_false(vhu_vring_set_addr(d->vring, &addr, &error));
  g_assert_nonnull(strstr(error->message, "used ring"));
  g_clear_error(&error);
  g_assert_false(vhu_vring_start(d->vring, &error));
  g_clear_error(&error);
  addr.used_user_addr = uva_of(USED_GPA);
  g_assert_true(vhu_vring_set_addr(d->vring, &addr, &error));
  g_assert_no_error(error);

  /* Addresses before the memory table: translated on set_mem. */
  v = vhu_vring_new(3);
  g_assert_cmpuint(vhu_vring_index(v), ==, 3);
  g_assert_true(vhu_vring_set_num(v, 8, &error));
  g_assert_true(vhu_vring_set_addr(v, &addr, &error));
  g_assert_false(vhu_vring_start(v, &error));
  g_assert_nonnull(strstr(error->message, "queue 3"));
  g_clear_error(&error);
  g_assert_true(vhu_vring_set_mem(v, d->mem, &error));
  g_assert_true(vhu_vring_start(v, &error));
  g_assert_no_error(error);
  g_assert_false(vhu_vring_set_num(v, 16, &error));
  g_clear_error(&error);
  g_assert_false(vhu_vring_set_base(v, 1, &error));
  g_clear_error(&error);

  /* Call and error fds are owned: replacing one closes the old one. */
  efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  vhu_vring_set_err_fd(v, efd);
  vhu_vring_signal_error(v);
  {
    guint64 val = 0;

    g_assert_cmpint(read(efd, &val, sizeof val), ==, sizeof val);
    g_assert_cmpuint(val, ==, 1);
  }
  vhu_vring_set_err_fd(v, -1);
  g_assert_cmpint(fcntl(efd, F_GETFD), ==, -1);
  g_assert_cmpint(errno, ==, EBADF);
  efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  vhu_vring_set_call_fd(v, efd);
  vhu_vring_reset(v);
  g_assert_cmpint(fcntl(efd, F_GETFD), ==, -1);
  vhu_vring_free(v);
  driver_free(d);
}

/* ---- broken rings ------------------------------------------------------ */

static void
expect_broken(Driver *d, const char *what)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *reason = NULL;

  g_assert_null(vhu_vring_pop(d->vring, &error));
  g_assert_error(error, VHU_VRING_ERROR, VHU_VRING_ERROR_BROKEN);
  g_test_message("%s", error->message);
  g_assert_true(g_str_has_prefix(error->message, "queue 0: "));
  g_assert_nonnull(strstr(error->message, what));
  g_assert_true(vhu_vring_is_broken(d->vring));
  /* The ring keeps the reason for the backend's log line. */
  reason = vhu_vring_dup_broken_reason(d->vring);
  g_assert_cmpstr(reason, ==, error->message + strlen("queue 0: "));
  g_clear_error(&error);
  /* Once only; then the ring does nothing. */
  g_assert_null(vhu_vring_pop(d->vring, &error));
  g_assert_no_error(error);
  add_simple(d, 4, 0, 0);
  g_assert_null(vhu_vring_pop(d->vring, &error));
  g_assert_no_error(error);
  g_assert_false(vhu_vring_notify(d->vring));
}

typedef void (*BreakFunc)(Driver *d);

static void
break_avail_jump(Driver *d)
{
  d->avail->idx = d->num + 1;
}

static void
break_head(Driver *d)
{
  publish(d, d->num);
}

static void
break_loop(Driver *d)
{
  write_desc(d->desc, 0, DATA_GPA, 4, VRING_DESC_F_NEXT, 1);
  write_desc(d->desc, 1, DATA_GPA, 4, VRING_DESC_F_NEXT, 0);
  publish(d, 0);
}

static void
break_next(Driver *d)
{
  write_desc(d->desc, 0, DATA_GPA, 4, VRING_DESC_F_NEXT, d->num);
  publish(d, 0);
}

static void
break_next_mid_chain(Driver *d)
{
  write_desc(d->desc, 2, DATA_GPA, 4, VRING_DESC_F_NEXT, 3);
  write_desc(d->desc, 3, DATA_GPA, 4, VRING_DESC_F_NEXT, 300);
  publish(d, 2);
}

static void
break_order(Driver *d)
{
  write_desc(d->desc, 0, DATA_GPA, 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
  write_desc(d->desc, 1, DATA_GPA, 4, 0, 0);
  publish(d, 0);
}

static void
break_unmapped(Driver *d)
{
  write_desc(d->desc, 0, GAP_GPA, 4, 0, 0);
  publish(d, 0);
}

static void
break_past_end(Driver *d)
{
  /* Starts in region 2, runs beyond its end. */
  write_desc(d->desc, 0, R2_GPA + R2_SIZE - 4, 8, 0, 0);
  publish(d, 0);
}

static void
break_addr_overflow(Driver *d)
{
  write_desc(d->desc, 0, G_MAXUINT64 - 8, 64, 0, 0);
  publish(d, 0);
}

static void
indirect_with(Driver *d, guint64 addr, guint32 len, guint16 flags)
{
  write_desc(d->desc, 0, addr, len, VRING_DESC_F_INDIRECT | flags, 1);
  write_desc(d->desc, 1, DATA_GPA, 4, 0, 0);
  publish(d, 0);
}

static void
break_indirect_len(Driver *d)
{
  indirect_with(d, DATA_GPA, 24, 0);
}

static void
break_indirect_zero(Driver *d)
{
  indirect_with(d, DATA_GPA, 0, 0);
}

static void
break_indirect_huge(Driver *d)
{
  indirect_with(d, DATA_GPA, 16 * 1025, 0);
}

static void
break_indirect_next(Driver *d)
{
  indirect_with(d, DATA_GPA, 16, VRING_DESC_F_NEXT);
}

static void
break_indirect_unmapped(Driver *d)
{
  indirect_with(d, R2_GPA + R2_SIZE - 16, 32, 0);
}

static void
break_indirect_nested(Driver *d)
{
  struct vring_desc *t = gpa_ptr(d, DATA_GPA, 32);

  write_desc(t, 0, DATA_GPA + 64, 4, VRING_DESC_F_NEXT, 1);
  write_desc(t, 1, DATA_GPA + 64, 16, VRING_DESC_F_INDIRECT, 0);
  indirect_with(d, DATA_GPA, 32, 0);
}

static void
break_indirect_loop(Driver *d)
{
  struct vring_desc *t = gpa_ptr(d, DATA_GPA, 32);

  write_desc(t, 0, DATA_GPA + 64, 4, VRING_DESC_F_NEXT, 1);
  write_desc(t, 1, DATA_GPA + 64, 4, VRING_DESC_F_NEXT, 0);
  indirect_with(d, DATA_GPA, 32, 0);
}

static void
break_indirect_next_range(Driver *d)
{
  struct vring_desc *t = gpa_ptr(d, DATA_GPA, 32);

  write_desc(t, 0, DATA_GPA + 64, 4, VRING_DESC_F_NEXT, 2);
  write_desc(t, 1, DATA_GPA + 64, 4, 0, 0);
  indirect_with(d, DATA_GPA, 32, 0);
}

static void
break_indirect_order(Driver *d)
{
  struct vring_desc *t = gpa_ptr(d, DATA_GPA, 32);

  write_desc(t, 0, DATA_GPA + 64, 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
  write_desc(t, 1, DATA_GPA + 64, 4, 0, 0);
  indirect_with(d, DATA_GPA, 32, 0);
}

static void
break_too_many_segments(Driver *d)
{
  /* 1024 entries, each crossing from region 1 into region 2. */
  struct vring_desc *t = gpa_ptr(d, DATA_GPA, 16 * 1024);

  for (guint i = 0; i < 1024; i++)
    write_desc(t, i, R2_GPA - 1, 2, i < 1023 ? VRING_DESC_F_NEXT : 0, i + 1);
  indirect_with(d, DATA_GPA, 16 * 1024, 0);
}

typedef struct {
  const char *name;
  BreakFunc func;
  guint64 features;
  const char *message;
} BreakCase;

/* @message: a part of the reason precise enough to name the culprit. */
static const BreakCase break_cases[] = {
  { "avail-jump", break_avail_jump, F_INDIRECT,
    "avail index moved from 0 to 9, more than the ring size 8" },
  { "head", break_head, F_INDIRECT, "avail entry 0 names head 8, beyond ring size 8" },
  { "loop", break_loop, F_INDIRECT, "head 0: chain longer than the ring size 8 (a loop)" },
  { "next", break_next, F_INDIRECT, "descriptor 0 chains to 8, beyond ring size 8" },
  { "next-mid-chain", break_next_mid_chain, F_INDIRECT,
    "descriptor 3 (chain of head 2) chains to 300, beyond ring size 8" },
  { "readable-after-writable", break_order, F_INDIRECT,
    "descriptor 1 (chain of head 0) is device-readable but follows a device-writable one" },
  { "unmapped", break_unmapped, F_INDIRECT, "is not in guest memory" },
  { "past-region-end", break_past_end, F_INDIRECT, "is not in guest memory" },
  { "address-overflow", break_addr_overflow, F_INDIRECT,
    "descriptor 0: buffer 0xfffffffffffffff7+64 is not in guest memory" },
  { "indirect-len", break_indirect_len, F_INDIRECT, "descriptor 0: indirect table of 24 bytes" },
  { "indirect-zero", break_indirect_zero, F_INDIRECT, "indirect table of 0 bytes" },
  { "indirect-huge", break_indirect_huge, F_INDIRECT, "indirect table of 16400 bytes" },
  { "indirect-and-next", break_indirect_next, F_INDIRECT,
    "descriptor 0 has both INDIRECT and NEXT" },
  { "indirect-unmapped", break_indirect_unmapped, F_INDIRECT, "descriptor 0: indirect table 0x" },
  { "indirect-nested", break_indirect_nested, F_INDIRECT,
    "indirect descriptor 1 (head 0) is indirect inside an indirect table" },
  { "indirect-loop", break_indirect_loop, F_INDIRECT,
    "head 0: chain longer than its indirect table of 2 entries" },
  { "indirect-next", break_indirect_next_range, F_INDIRECT,
    "indirect descriptor 0 (head 0) chains to 2, beyond its indirect table of 2 entries" },
  { "indirect-order", break_indirect_order, F_INDIRECT,
    "indirect descriptor 1 (head 0) is device-readable but follows" },
  { "indirect-not-negotiated", break_indirect_len, 0,
    "descriptor 0 is indirect, but INDIRECT_DESC was not negotiated" },
  { "too-many-segments", break_too_many_segments, F_INDIRECT, "head 0: chain needs more than" },
};

static void
test_broken(gconstpointer data)
{
  const BreakCase *c = data;
  Driver *d = driver_new(8, c->features);
  g_autoptr(GError) error = NULL;

  c->func(d);
  expect_broken(d, c->message);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 0);
  /* A fresh start by the frontend (stop, new base, start) revives it. */
  vhu_vring_stop(d->vring);
  d->avail->idx = d->avail_idx = 0;
  d->next_desc = 0;
  g_assert_true(vhu_vring_set_base(d->vring, 0, &error));
  start_vring(d);
  g_assert_false(vhu_vring_is_broken(d->vring));
  g_assert_null(vhu_vring_dup_broken_reason(d->vring));
  add_simple(d, 4, 0, 0);
  complete_one(d);
  driver_free(d);
}

static void
test_zero_length_harmless(void)
{
  Driver *d = driver_new(8, 0);
  VhuElem *elem;

  /* Zero-length descriptors anywhere, even unmapped or out of order. */
  write_desc(d->desc, 0, GAP_GPA, 0, VRING_DESC_F_NEXT, 1);
  write_desc(d->desc, 1, DATA_GPA, 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
  write_desc(d->desc, 2, GAP_GPA, 0, 0, 0);
  publish(d, 0);
  elem = pop_ok(d);
  g_assert_cmpuint(elem->out_num, ==, 0);
  g_assert_null(elem->out_sg);
  g_assert_cmpuint(elem->in_num, ==, 1);
  vhu_vring_push(d->vring, elem, 4);
  driver_free(d);
}

/* ---- inflight ---------------------------------------------------------- */

typedef struct {
  int fd;
  VhuInflightQueue *q;
  gsize size;
} Inflight;

static void
inflight_init(Inflight *inf, guint num)
{
  inf->size = vhu_vring_inflight_region_size(num);
  inf->fd = make_memfd(inf->size, (guint8 **)&inf->q);
}

static void
inflight_clear(Inflight *inf)
{
  munmap(inf->q, inf->size);
  close(inf->fd);
}

/* Simulates a backend restart: a new vring over the same guest memory and
 * inflight region, base from the used index as QEMU sends it. */
static void
restart_with_inflight(Driver *d, Inflight *inf)
{
  g_autoptr(GError) error = NULL;

  vhu_vring_free(d->vring);
  configure_vring(d, used_idx(d));
  g_assert_true(vhu_vring_set_inflight(d->vring, inf->q, inf->size, &error));
  g_assert_no_error(error);
  start_vring(d);
}

/* An 8-entry ring started with a fresh inflight region @inf. */
static Driver *
driver_new_inflight(Inflight *inf)
{
  Driver *d = driver_new_base(8, 0, 0, FALSE);
  g_autoptr(GError) error = NULL;

  inflight_init(inf, 8);
  g_assert_true(vhu_vring_set_inflight(d->vring, inf->q, inf->size, &error));
  g_assert_no_error(error);
  start_vring(d);
  return d;
}

static void
test_inflight_region_size(void)
{
  for (guint n = 1; n <= 1024; n++) {
    gsize libvhost_user = (16 * n + 2 + 63) & ~(gsize)63;

    g_assert_cmpuint(vhu_vring_inflight_region_size(n), ==, libvhost_user);
    g_assert_cmpuint(vhu_vring_inflight_region_size(n), >=,
                     sizeof(VhuInflightQueue) + n * sizeof(VhuInflightDesc));
    g_assert_cmpuint(vhu_vring_inflight_region_size(n) % 64, ==, 0);
  }
  g_assert_cmpuint(sizeof(VhuInflightQueue), ==, 16);
  g_assert_cmpuint(sizeof(VhuInflightDesc), ==, 16);
}

static void
test_inflight_resubmit(void)
{
  static const guint16 order[] = { 3, 1, 2, 0 };
  VhuElem *elems[4];
  Inflight inf;
  Driver *d = driver_new_inflight(&inf);

  g_assert_cmpuint(inf.q->version, ==, 1);
  g_assert_cmpuint(inf.q->desc_num, ==, 8);

  /* Heads published out of numeric order, so resubmission must follow the
   * pop order recorded in the counters, not the head numbers. */
  for (guint i = 0; i < 4; i++) {
    Buf b = { alloc_buf(d, 4, i), 4, FALSE };

    write_chain(d->desc, (guint[]){ order[i] }, &b, 1);
    publish(d, order[i]);
  }
  for (guint i = 0; i < 4; i++) {
    elems[i] = pop_ok(d);
    g_assert_cmpuint(elems[i]->head, ==, order[i]);
    g_assert_cmpuint(inf.q->desc[order[i]].inflight, ==, 1);
  }
  vhu_vring_push(d->vring, elems[1], 0);
  g_assert_cmpuint(inf.q->desc[1].inflight, ==, 0);
  g_assert_cmpuint(inf.q->used_idx, ==, 1);
  g_assert_cmpuint(inf.q->last_batch_head, ==, 1);

  /* Crash: the other three never complete. */
  vhu_elem_free(elems[0]);
  vhu_elem_free(elems[2]);
  vhu_elem_free(elems[3]);
  restart_with_inflight(d, &inf);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 4);
  for (guint i = 0; i < 4; i++) {
    if (i == 1)
      continue;
    elems[i] = pop_ok(d);
    g_assert_cmpuint(elems[i]->head, ==, order[i]);
  }
  pop_empty(d);
  /* A new request after the resubmitted ones. */
  d->next_desc = 4;
  add_simple(d, 4, 0, 9);
  elems[1] = pop_ok(d);
  g_assert_cmpuint(elems[1]->head, ==, 4);
  for (guint i = 0; i < 4; i++)
    vhu_vring_push(d->vring, elems[i], 0);
  g_assert_cmpuint(used_idx(d), ==, 5);
  g_assert_cmpuint(inf.q->used_idx, ==, 5);
  for (guint i = 0; i < 8; i++)
    g_assert_cmpuint(inf.q->desc[i].inflight, ==, 0);

  /* Nothing inflight: a restart resubmits nothing. */
  restart_with_inflight(d, &inf);
  pop_empty(d);
  g_assert_cmpuint(vhu_vring_get_base(d->vring), ==, 5);
  inflight_clear(&inf);
  driver_free(d);
}

static void
test_inflight_crash_after_used(void)
{
  VhuElem *a, *b;
  guint16 b_head;
  Inflight inf;
  Driver *d = driver_new_inflight(&inf);

  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  a = pop_ok(d);
  b = pop_ok(d);
  b_head = b->head;
  vhu_vring_push(d->vring, b, 0);
  g_assert_cmpuint(inf.q->last_batch_head, ==, b_head);
  /* Pretend we died after used->idx moved but before the region caught
   * up: b looks inflight, the region's used_idx lags. */
  inf.q->desc[b_head].inflight = 1;
  inf.q->used_idx = 0;
  vhu_elem_free(a);
  restart_with_inflight(d, &inf);
  g_assert_cmpuint(inf.q->used_idx, ==, 1);
  g_assert_cmpuint(inf.q->desc[b_head].inflight, ==, 0);
  a = pop_ok(d);
  g_assert_cmpuint(a->head, ==, 0);
  pop_empty(d);
  vhu_vring_push(d->vring, a, 0);
  inflight_clear(&inf);
  driver_free(d);
}

static void
test_inflight_unpop_and_stop(void)
{
  g_autoptr(GError) error = NULL;
  VhuElem *a, *b;
  Inflight inf;
  Driver *d = driver_new_inflight(&inf);

  add_simple(d, 4, 0, 0);
  add_simple(d, 4, 0, 0);
  a = pop_ok(d);
  b = pop_ok(d);
  /* Rewound by unpop: no longer inflight, will come from avail again. */
  vhu_vring_unpop(d->vring, b);
  g_assert_cmpuint(inf.q->desc[1].inflight, ==, 0);
  /* Stop drops a's completion; the next start resubmits it. */
  vhu_vring_stop(d->vring);
  vhu_vring_push(d->vring, a, 0);
  g_assert_cmpuint(used_idx(d), ==, 0);
  g_assert_true(vhu_vring_set_base(d->vring, vhu_vring_get_base(d->vring), &error));
  start_vring(d);
  a = pop_ok(d);
  g_assert_cmpuint(a->head, ==, 0);
  b = pop_ok(d);
  g_assert_cmpuint(b->head, ==, 1);
  pop_empty(d);
  vhu_vring_push(d->vring, a, 0);
  vhu_vring_push(d->vring, b, 0);
  g_assert_cmpuint(used_idx(d), ==, 2);
  inflight_clear(&inf);
  driver_free(d);
}

static void
test_inflight_bad_region(void)
{
  Driver *d = driver_new_base(8, 0, 0, FALSE);
  g_autoptr(GError) error = NULL;
  Inflight inf;

  inflight_init(&inf, 16);
  g_assert_false(vhu_vring_set_inflight(d->vring, inf.q, 15, &error));
  g_clear_error(&error);
  g_assert_false(
      vhu_vring_set_inflight(d->vring, inf.q, vhu_vring_inflight_region_size(4), &error));
  g_clear_error(&error);
  /* Recorded for 16 descriptors, the queue has 8. */
  inf.q->version = 1;
  inf.q->desc_num = 16;
  g_assert_true(vhu_vring_set_inflight(d->vring, inf.q, inf.size, &error));
  g_assert_false(vhu_vring_start(d->vring, &error));
  g_assert_nonnull(strstr(error->message, "inflight"));
  g_clear_error(&error);
  /* Claims more entries than it has room for. */
  inf.q->desc_num = 1000;
  g_assert_false(vhu_vring_set_inflight(d->vring, inf.q, inf.size, &error));
  g_clear_error(&error);
  g_assert_true(vhu_vring_set_inflight(d->vring, NULL, 0, &error));
  start_vring(d);
  inflight_clear(&inf);
  driver_free(d);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/vring/simple-chain", test_simple_chain);
  g_test_add_func("/vring/readable-writable-split", test_readable_writable_split);
  g_test_add_func("/vring/indirect", test_indirect);
  g_test_add_func("/vring/span-regions", test_span_regions);
  g_test_add_func("/vring/zero-length-harmless", test_zero_length_harmless);
  g_test_add_func("/vring/notify/no-interrupt", test_no_interrupt);
  g_test_add_func("/vring/notify/on-empty", test_notify_on_empty);
  g_test_add_func("/vring/notify/event-idx", test_event_idx);
  g_test_add_func("/vring/notify/set-notification", test_set_notification);
  g_test_add_func("/vring/wrap-around", test_wrap_around);
  g_test_add_func("/vring/unpop", test_unpop);
  g_test_add_func("/vring/stale-push", test_stale_push);
  g_test_add_func("/vring/disabled-and-mem-change", test_disabled_and_mem_change);
  g_test_add_func("/vring/config-errors", test_config_errors);
  for (guint i = 0; i < G_N_ELEMENTS(break_cases); i++) {
    g_autofree char *path = g_strdup_printf("/vring/broken/%s", break_cases[i].name);

    g_test_add_data_func(path, &break_cases[i], test_broken);
  }
  g_test_add_func("/vring/inflight/region-size", test_inflight_region_size);
  g_test_add_func("/vring/inflight/resubmit", test_inflight_resubmit);
  g_test_add_func("/vring/inflight/crash-after-used", test_inflight_crash_after_used);
  g_test_add_func("/vring/inflight/unpop-and-stop", test_inflight_unpop_and_stop);
  g_test_add_func("/vring/inflight/bad-region", test_inflight_bad_region);
  return g_test_run();
}
