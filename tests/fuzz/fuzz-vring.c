/* fuzz-vring.c: a hostile guest against the device side of a split ring.
 *
 * The input is the guest: its first bytes pick the ring size, features,
 * start index and how the device behaves; the rest is copied over guest
 * memory, so it is the descriptor table, the avail ring and buffer bytes.
 * The device pops, reads, writes, unpops and completes (partly out of
 * order) until the ring is empty or broken, then "crashes" and restarts
 * over the same inflight region and drains the resubmitted requests.
 *
 * Input layout:
 *   [0]     ring size: 1 << (b % 9), 1..256
 *   [1]     virtio features: bit 0 INDIRECT_DESC, 1 EVENT_IDX, 2 NOTIFY_ON_EMPTY
 *   [2]     device behaviour: bit 0 inflight region, 1 region content from
 *           the input too, 2 poll without notifications, 3 ring indices
 *           relative to the start index
 *   [3..4]  start index (little endian)
 *   [5..]   guest memory from gpa 0 on; after the ring layout it also
 *           drives the device's choices (one byte per request).
 *
 * Guest memory: region A gpa [0, 64 KiB) and region B right after it
 * (4 KiB, another file) so buffers and indirect tables can span both. */
#include "vhu-vring-private.h"

#include <linux/virtio_ring.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARENA_SIZE  0x10000u
#define ARENA_UVA   0x7f0000000000ull
#define ARENA_OFF   0x1000u /* mmap_offset, as QEMU's non-zero ones */
#define EXTRA_SIZE  0x1000u
#define EXTRA_UVA   0x7f1000000000ull
#define DESC_GPA    0x0000u
#define AVAIL_GPA   0x1000u
#define USED_GPA    0x1400u
#define HEADER_SIZE 5u
#define MAX_HELD    4u
#define MAX_QUEUE   256u

int LLVMFuzzerTestOneInput(const guint8 *data, size_t size);

static VhuMemTable *mem;
static guint8 *arena, *extra; /* host views of regions A and B */
static guint8 inflight_buf[8192] __attribute__((aligned(64)));

static int
memfd_of(gsize size)
{
  int fd = memfd_create("fuzz-vring", MFD_CLOEXEC);

  if (fd < 0 || ftruncate(fd, size) < 0)
    abort();
  return fd;
}

/* One memory table for the whole run; every input overwrites its bytes. */
static void
setup_memory(void)
{
  VhuMemRegionDesc a = { 0, ARENA_SIZE, ARENA_UVA, ARENA_OFF };
  VhuMemRegionDesc b = { ARENA_SIZE, EXTRA_SIZE, EXTRA_UVA, 0 };
  int fd_a = memfd_of(ARENA_OFF + ARENA_SIZE), fd_b = memfd_of(EXTRA_SIZE);
  VhuMemTable *empty = vhu_mem_table_new(), *one;
  guint64 len = ARENA_SIZE;

  one = vhu_mem_table_add(empty, &a, fd_a, 8, NULL);
  mem = one ? vhu_mem_table_add(one, &b, fd_b, 8, NULL) : NULL;
  if (mem == NULL)
    abort();
  vhu_mem_table_unref(empty);
  vhu_mem_table_unref(one);
  close(fd_a);
  close(fd_b);
  arena = vhu_mem_gpa_to_host(mem, 0, &len);
  len = EXTRA_SIZE;
  extra = vhu_mem_gpa_to_host(mem, ARENA_SIZE, &len);
}

typedef struct {
  const guint8 *choices; /* device decisions, consumed one per request */
  gsize n_choices;
  gsize next;
} Script;

static guint8
next_choice(Script *s)
{
  if (s->n_choices == 0)
    return 0;
  return s->choices[s->next++ % s->n_choices];
}

static VhuVring *
make_vring(guint num, guint64 features, guint16 base, gboolean inflight, gsize inflight_size)
{
  VhuVring *vring = vhu_vring_new(0);
  VhuVringAddr addr = {
    .desc_user_addr = ARENA_UVA + DESC_GPA,
    .avail_user_addr = ARENA_UVA + AVAIL_GPA,
    .used_user_addr = ARENA_UVA + USED_GPA,
  };

  if (!vhu_vring_set_num(vring, num, NULL) || !vhu_vring_set_base(vring, base, NULL)
      || !vhu_vring_set_mem(vring, mem, NULL) || !vhu_vring_set_addr(vring, &addr, NULL))
    abort();
  vhu_vring_set_features(vring, features);
  if (inflight && !vhu_vring_set_inflight(vring, inflight_buf, inflight_size, NULL))
    inflight = FALSE;
  /* Start fails only on an inconsistent inflight region from the input. */
  if (!vhu_vring_start(vring, NULL)) {
    vhu_vring_free(vring);
    return NULL;
  }
  vhu_vring_set_enabled(vring, TRUE);
  return vring;
}

/* Exercises the element like a device would: read the request, write a
 * reply. */
static guint32
serve(const VhuElem *elem, guint8 choice)
{
  guint8 buf[256];
  gsize reply = MIN(elem->in_len, sizeof buf);

  vhu_elem_read(elem, choice, buf, sizeof buf);
  memset(buf, choice, sizeof buf);
  vhu_elem_write(elem, choice / 2, buf, reply);
  /* May claim more than was offered: the ring clamps it. */
  return (guint32)choice * 16;
}

/* Pops until empty or broken (or out of budget).  Held requests are then
 * completed, or with @keep_held dropped as a crashing device would. */
static void
drain(VhuVring *vring, Script *s, gboolean keep_held)
{
  VhuElem *held[MAX_HELD] = { NULL };
  guint n_held = 0;
  guint budget = 4 * vhu_vring_size(vring) + 16;

  while (budget-- > 0) {
    GError *error = NULL;
    VhuElem *elem = vhu_vring_pop(vring, &error);
    guint8 choice;

    if (elem == NULL) {
      g_clear_error(&error);
      if (vhu_vring_is_broken(vring) || !vhu_vring_set_notification(vring, TRUE))
        break;
      continue;
    }
    choice = next_choice(s);
    switch (choice & 3) {
      case 0: /* complete now */
        vhu_vring_complete(vring, elem, serve(elem, choice));
        break;
      case 1: /* not now: put it back */
        vhu_vring_unpop(vring, elem);
        break;
      case 2: /* put back the oldest held one, keep this one */
        if (n_held > 0 && (choice & 0x40)) {
          vhu_vring_unpop(vring, held[0]);
          memmove(held, held + 1, --n_held * sizeof held[0]);
          if (choice & 0x20) { /* and this one too */
            vhu_vring_unpop(vring, elem);
            break;
          }
        }
        G_GNUC_FALLTHROUGH;
      default: /* complete later, out of order */
        if (n_held == MAX_HELD) {
          vhu_vring_push(vring, held[--n_held], 0);
          vhu_vring_notify(vring);
        }
        held[n_held++] = elem;
        break;
    }
    if (choice & 0x80)
      vhu_vring_set_notification(vring, FALSE);
  }
  /* Held requests: complete them, or leave them inflight for a restart. */
  while (n_held > 0) {
    VhuElem *elem = held[--n_held];

    if (keep_held)
      vhu_elem_free(elem);
    else
      vhu_vring_complete(vring, elem, serve(elem, 0));
  }
}

int
LLVMFuzzerTestOneInput(const guint8 *data, size_t size)
{
  guint num, flags;
  guint64 features = 0;
  guint16 base;
  gsize inflight_size;
  gboolean inflight;
  Script script;
  VhuVring *vring;

  if (size < HEADER_SIZE)
    return 0;
  if (mem == NULL)
    setup_memory();

  num = 1u << (data[0] % 9);
  if (data[1] & 1)
    features |= G_GUINT64_CONSTANT(1) << VHU_F_RING_INDIRECT_DESC;
  if (data[1] & 2)
    features |= G_GUINT64_CONSTANT(1) << VHU_F_RING_EVENT_IDX;
  if (data[1] & 4)
    features |= G_GUINT64_CONSTANT(1) << VHU_F_NOTIFY_ON_EMPTY;
  flags = data[2];
  base = data[3] | (data[4] << 8);
  data += HEADER_SIZE;
  size -= HEADER_SIZE;

  /* The guest's memory is the input, zero beyond it. */
  memset(arena, 0, ARENA_SIZE);
  memset(extra, 0, EXTRA_SIZE);
  memcpy(arena, data, MIN(size, ARENA_SIZE));
  if (size > ARENA_SIZE)
    memcpy(extra, data + ARENA_SIZE, MIN(size - ARENA_SIZE, EXTRA_SIZE));
  /* The device's choices come from the bytes after the ring layout. */
  script.choices = size > 0x2000 ? data + 0x2000 : data;
  script.n_choices = size > 0x2000 ? size - 0x2000 : size;
  script.next = 0;

  inflight = (flags & 1) != 0;
  inflight_size = vhu_vring_inflight_region_size(num);
  G_STATIC_ASSERT(sizeof inflight_buf >= 16 + 16 * MAX_QUEUE + 64);
  memset(inflight_buf, 0, sizeof inflight_buf);
  if (inflight && (flags & 2))
    memcpy(inflight_buf, data, MIN(size, inflight_size));
  if (flags & 8) {
    /* A guest that resumes at the start index: its indices count from
     * there. */
    ((struct vring_avail *)(arena + AVAIL_GPA))->idx += base;
    ((struct vring_used *)(arena + USED_GPA))->idx = base;
  }
  vring = make_vring(num, features, base, inflight, inflight_size);
  if (vring == NULL)
    return 0;
  if (flags & 4)
    vhu_vring_set_notification(vring, FALSE);
  drain(vring, &script, inflight);
  vhu_vring_get_base(vring);

  if (inflight) {
    /* Crash and restart over the same inflight region. */
    guint16 used = ((struct vring_used *)(arena + USED_GPA))->idx;

    vhu_vring_free(vring);
    vring = make_vring(num, features, used, TRUE, inflight_size);
    if (vring == NULL)
      return 0;
    drain(vring, &script, FALSE);
  }
  vhu_vring_stop(vring);
  vhu_vring_free(vring);
  return 0;
}
