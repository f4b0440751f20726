/* fuzz-gpu.c: a hostile guest against the virtio-gpu 2D device model.
 *
 * The input is a script: a header configures a VgpuDevice (1-4 scanouts, a
 * small host-memory budget, one or two display sinks), then each operation
 * is a control or cursor request (the command usually one of the real ones,
 * ids small, rectangles and offsets sized from the resources created so
 * far, backing entries into, across and outside the guest memory regions,
 * response buffers of random sizes), or a change around it: guest memory
 * written, sinks releasing frames or answering display queries, a device
 * reset, a new memory table.  Everything runs on this thread; a run is
 * deterministic (apart from RESOURCE_ASSIGN_UUID's random bytes and the log
 * rate limiter's clock, neither of which steers the model).
 *
 * The sinks read every pixel they are handed (the image rectangle, or the
 * guest rows of update_guest through the backing) so that reads outside
 * anything show up under ASan, and check what a display relies on: ids and
 * rectangles inside the scanout being shown, guest rows inside the backing.
 * They keep some frames read-marked or lent, like a display writer that is
 * still sending, and the harness checks the device's promises around that:
 * no write into an image being read, no TRANSFER into a resource being read,
 * no DETACH_BACKING / RESOURCE_UNREF answered while its guest memory is read
 * or lent, and a refused request becomes acceptable (with ops->wake) once
 * the sinks let go.  Also: every element completes or is discarded exactly
 * once, fenced requests complete after everything submitted before them,
 * responses have the command's type and echo the fence, display-info and
 * EDID answers hold nothing beyond what they describe, the budget is never
 * exceeded and is all credited back at a reset.  And the pixels: while the
 * harness saw every answer and the guest wrote nothing, whatever a sink is
 * shown (image rows, guest rows, cursor) must equal a model that copies
 * each accepted TRANSFER_TO_HOST_2D at once, which is what the deferred
 * transfers promise.  Any GLib warning or critical other than the
 * device's "guest: " lines aborts.  FUZZ_GPU_VERBOSE=1 shows those lines and
 * each request's answer, to read what an input does.
 *
 * Header (4 bytes):
 *   [0] bits 0-1 scanouts - 1; 2-3 sinks (0 guest-reading, 1 image-only,
 *       2 image-only then guest-reading, 3 guest-reading then one with
 *       update_guest only); 4-5 budget (4 MiB, 1 MiB, 64 KiB, 16 MiB);
 *       6 at most 4 resources; 7 free the device while the sinks still hold
 *       frames
 *   [1] hold pattern (each sink call takes the next bit: keep the frame)
 *   [2] bits 0-1 mode (1280x800, 16x16, 4095x4095, 640x480); 2 sinks hold
 *       display queries; 3-5 first memory table
 *   [3] bit 0: no features negotiated (else VGPU_DEVICE_FEATURES and
 *       VGPU_BLOB_FEATURES); 1-7 reserved
 *
 * Blobs (RESOURCE_CREATE_BLOB, SET_SCANOUT_BLOB, MAP/UNMAP_BLOB) are
 * generated like the 2D commands; their pixels are not modelled (they are
 * the guest's memory), but every promise around them is checked: rows a
 * sink is shown lie inside the blob, no answer without the feature, nothing
 * is ever mapped.
 * Then operations until the input ends (at most MAX_OPS), see run_op().
 *
 * Guest memory: region A (1 MiB) and region B (64 KiB) right after it, in
 * two memfds; other tables drop B, drop A, move B away from A, or are
 * empty.  Both hold a fixed pattern; writes from the input are undone after
 * each run. */
#include <linux/virtio_gpu.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vgpu-blob.h"
#include "vgpu-device.h"

#define A_GPA     0x100000ull
#define A_SIZE    (1u << 20)
#define B_GPA     (A_GPA + A_SIZE)
#define B_SIZE    (64u << 10)
#define B_FAR_GPA 0x40000000ull
#define N_TABLES  5u

#define MAX_OPS      400u
#define MAX_HOLDS    8u
#define MAX_QUERIES  8u
#define SHADOW_IDS   8u
#define RESP_MAX     1100u /* more than the largest response (EDID: 1056) */
#define MANY_ENTRIES (VGPU_MAX_BACKING_ENTRIES + 600u)
#define DEFAULT_SIDE 64u

int LLVMFuzzerTestOneInput(const guint8 *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* --- input ------------------------------------------------------------------ */

typedef struct {
  const guint8 *p;
  gsize n, pos;
} Input;

static guint8
in_u8(Input *in)
{
  return in->pos < in->n ? in->p[in->pos++] : 0;
}

static guint16
in_u16(Input *in)
{
  guint16 lo = in_u8(in);

  return (guint16)(lo | in_u8(in) << 8);
}

static guint32
in_u32(Input *in)
{
  guint32 lo = in_u16(in);

  return lo | (guint32)in_u16(in) << 16;
}

static guint64
in_u64(Input *in)
{
  guint64 lo = in_u32(in);

  return lo | (guint64)in_u32(in) << 32;
}

/* --- guest memory ----------------------------------------------------------- */

static VhuMemTable *tables[N_TABLES];
static guint8 *region_a, *region_b;
static guint8 *pristine_a, *pristine_b;

typedef struct {
  gsize lo, hi; /* written by the current input; restored afterwards */
} Dirty;

static int
memfd_of(gsize size)
{
  int fd = memfd_create("fuzz-gpu-guest", MFD_CLOEXEC);

  if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
    abort();
  return fd;
}

static VhuMemTable *
table_of(const VhuMemRegionDesc *r0, int fd0, const VhuMemRegionDesc *r1, int fd1)
{
  VhuMemTable *t = vhu_mem_table_new();

  if (r0) {
    VhuMemTable *next = vhu_mem_table_add(t, r0, fd0, 8, NULL);

    vhu_mem_table_unref(t);
    t = next;
  }
  if (t && r1) {
    VhuMemTable *next = vhu_mem_table_add(t, r1, fd1, 8, NULL);

    vhu_mem_table_unref(t);
    t = next;
  }
  if (!t)
    abort();
  return t;
}

/* The tables live for the whole run; each maps the files on its own, so the
 * harness writes through table 0's view (all views share the files). */
static void
setup_memory(void)
{
  const VhuMemRegionDesc a = { A_GPA, A_SIZE, 0x7e0000000000ull, 0 };
  const VhuMemRegionDesc b = { B_GPA, B_SIZE, 0x7e1000000000ull, 0 };
  const VhuMemRegionDesc b_far = { B_FAR_GPA, B_SIZE, 0x7e1000000000ull, 0 };
  int fd_a = memfd_of(A_SIZE), fd_b = memfd_of(B_SIZE);
  guint64 len;

  tables[0] = table_of(&a, fd_a, &b, fd_b);
  tables[1] = table_of(&a, fd_a, NULL, -1);
  tables[2] = table_of(&a, fd_a, &b_far, fd_b);
  tables[3] = table_of(&b, fd_b, NULL, -1);
  tables[4] = table_of(NULL, -1, NULL, -1);
  close(fd_a);
  close(fd_b);
  len = A_SIZE;
  region_a = vhu_mem_gpa_to_host(tables[0], A_GPA, &len);
  len = B_SIZE;
  region_b = vhu_mem_gpa_to_host(tables[0], B_GPA, &len);
  if (!region_a || !region_b)
    abort();
  pristine_a = g_malloc(A_SIZE);
  pristine_b = g_malloc(B_SIZE);
  for (gsize i = 0; i < A_SIZE; i++)
    pristine_a[i] = (guint8)(i * 7 + (i >> 12));
  for (gsize i = 0; i < B_SIZE; i++)
    pristine_b[i] = (guint8)(i * 13 + 0x5a);
  memcpy(region_a, pristine_a, A_SIZE);
  memcpy(region_b, pristine_b, B_SIZE);
}

/* --- state of one run ------------------------------------------------------- */

typedef struct {
  VhuElem elem;
  struct iovec out[2], in[2];
  guint qidx;
  guint64 seq;
  guint32 type, res_id;
  gboolean fenced;
  guint64 fence_id;
  gboolean transfer_empty; /* TRANSFER_TO_HOST_2D of an empty rectangle */
  guint32 create_w, create_h, create_format;
  guint32 blob_mem, blob_flags; /* RESOURCE_CREATE_BLOB */
  struct virtio_gpu_rect rect;  /* TRANSFER_TO_HOST_2D */
  guint64 offset;
  struct virtio_gpu_mem_entry *ents; /* ATTACH_BACKING, as the device reads them */
  guint n_ents;
  /* What the sinks held of the resource when the device took it. */
  gboolean backing_used, read;
  guint64 features; /* negotiated when it was submitted */
} FElem;

typedef enum {
  HOLD_IMAGE,
  HOLD_BACKING_READ,
  HOLD_BACKING_LOAN,
} HoldKind;

typedef struct {
  HoldKind kind;
  gpointer obj; /* VgpuImage or VgpuBacking, referenced */
  guint32 res_id;
  gboolean orphaned; /* its resource went (unref, reset): no longer checked */
  guint8 *copy;      /* HOLD_IMAGE: the pixels when the read began */
} Hold;

typedef struct {
  VgpuQuery *query;
  gboolean edid;
} HeldQuery;

typedef struct {
  const VgpuSinkIface *iface;
  struct {
    VgpuImage *image; /* not referenced: compared only */
    VgpuRect rect;
  } scanout[VGPU_MAX_SCANOUTS];
} FSink;

/* What the harness knows of a resource with a small id, from the answers
 * it saw: its size (to aim rectangles) and, while the model holds, its
 * pixels as an eager device would have them (every TRANSFER copied at
 * once). */
typedef struct {
  gboolean live;
  guint32 w, h, format;
  guint64 backing; /* bytes attached, 0: none */
  guint8 *pixels;  /* w * h * 4 */
  struct virtio_gpu_mem_entry *ents;
  guint64 *starts; /* backing offset of each entry */
  guint n_ents;
  VhuMemTable *mem; /* the table the backing was attached with */
} Shadow;

static struct {
  VgpuDevice *dev;
  VgpuDeviceConfig config;
  guint64 features; /* as last set on the device (none after a reset) */
  FSink sinks[2];
  guint n_sinks;
  VhuMemTable *mem;
  Dirty dirty_a, dirty_b;
  GQueue outstanding; /* FElem taken or being submitted, control queue, in order */
  guint64 next_seq;
  guint64 next_fence;
  gint wakes;
  guint32 hold_mask;
  gboolean hold_queries;
  Hold holds[MAX_HOLDS];
  guint n_holds;
  HeldQuery queries[MAX_QUERIES];
  guint n_queries;
  guint32 cur_res_id; /* resource of the request being submitted */
  FElem *submitting;  /* the control request being submitted ... */
  gboolean answered;  /* ... was answered in its submit */
  Shadow shadow[SHADOW_IDS];
  /* The pixel model holds while the harness saw every answer at once and
   * the guest wrote nothing: deferred transfers then show exactly what
   * eager ones would. */
  gboolean model_ok;
} st;

static volatile guint64 sink_sum; /* keeps the pixel reads */
static gboolean verbose;          /* FUZZ_GPU_VERBOSE: log lines and requests */

G_GNUC_NORETURN G_GNUC_PRINTF(1, 2) static void fail(const char *format, ...)
{
  va_list args;

  va_start(args, format);
  fputs("fuzz-gpu: ", stderr);
  vfprintf(stderr, format, args);
  fputc('\n', stderr);
  va_end(args);
  abort();
}

static gboolean
next_hold_bit(void)
{
  gboolean bit = st.hold_mask & 1u;

  st.hold_mask = st.hold_mask >> 1 | st.hold_mask << 31;
  return bit;
}

static guint64
hash_rect(const VgpuImage *img, const VgpuRect *r)
{
  guint64 h = 1469598103934665603ull;

  for (guint32 y = 0; y < r->height; y++) {
    const guint8 *row = img->data + (gsize)(r->y + y) * img->stride + (gsize)r->x * 4u;

    for (gsize i = 0; i < (gsize)r->width * 4u; i++)
      h = (h ^ row[i]) * 1099511628211ull;
  }
  return h;
}

/* --- holds ------------------------------------------------------------------ */

static void
add_hold(HoldKind kind, gpointer obj)
{
  Hold *h = &st.holds[st.n_holds++];

  h->kind = kind;
  h->res_id = st.cur_res_id;
  h->orphaned = FALSE;
  h->copy = NULL;
  if (kind == HOLD_IMAGE) {
    VgpuImage *img = obj;

    h->obj = vgpu_image_ref(img);
    h->copy = g_memdup2(img->data, (gsize)img->stride * img->height);
    vgpu_image_begin_read(img);
  } else {
    h->obj = vgpu_backing_ref(obj);
    if (kind == HOLD_BACKING_READ)
      vgpu_backing_begin_read(obj);
    else
      vgpu_backing_begin_loan(obj);
  }
}

static void
release_hold(guint i)
{
  Hold h = st.holds[i];

  memmove(&st.holds[i], &st.holds[i + 1], (st.n_holds - i - 1) * sizeof h);
  st.n_holds--;
  switch (h.kind) {
    case HOLD_IMAGE:
      /* Still read-marked until here: the device must not have written
       * anywhere in it (a sink may pass the whole memfd on). */
      if (memcmp(((VgpuImage *)h.obj)->data, h.copy,
                 (gsize)((VgpuImage *)h.obj)->stride * ((VgpuImage *)h.obj)->height)
          != 0)
        fail("image of resource %u written while a sink read it", h.res_id);
      g_free(h.copy);
      vgpu_image_end_read(h.obj);
      vgpu_image_unref(h.obj);
      break;
    case HOLD_BACKING_READ:
      vgpu_backing_end_read(h.obj);
      vgpu_backing_unref(h.obj);
      break;
    case HOLD_BACKING_LOAN:
      vgpu_backing_end_loan(h.obj);
      vgpu_backing_unref(h.obj);
      break;
  }
}

static void
release_all_holds(void)
{
  while (st.n_holds > 0)
    release_hold(0);
}

static void
orphan_holds(guint32 res_id, gboolean all)
{
  for (guint i = 0; i < st.n_holds; i++) {
    if (all || (st.holds[i].kind == HOLD_IMAGE && st.holds[i].res_id == res_id))
      st.holds[i].orphaned = TRUE;
  }
}

/* A hold of @kind on resource @res_id that the device must respect. */
static gboolean
held(guint32 res_id, HoldKind kind)
{
  for (guint i = 0; i < st.n_holds; i++) {
    if (!st.holds[i].orphaned && st.holds[i].res_id == res_id && st.holds[i].kind == kind)
      return TRUE;
  }
  return FALSE;
}

/* --- device ops ------------------------------------------------------------- */

static void
felem_free(FElem *e)
{
  g_free(e->ents);
  for (guint i = 0; i < 2; i++) {
    g_free(e->out[i].iov_base);
    g_free(e->in[i].iov_base);
  }
  vhu_mem_table_unref(e->elem.mem);
  g_free(e);
}

/* The one success answer of each command (0: none, it is not one). */
static guint32
ok_type(guint32 type)
{
  switch (type) {
    case VIRTIO_GPU_CMD_GET_DISPLAY_INFO:
      return VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    case VIRTIO_GPU_CMD_GET_EDID:
      return VIRTIO_GPU_RESP_OK_EDID;
    case VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID:
      return VIRTIO_GPU_RESP_OK_RESOURCE_UUID;
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
    case VIRTIO_GPU_CMD_SET_SCANOUT:
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
    case VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB:
      return VIRTIO_GPU_RESP_OK_NODATA;
    case VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB:
      return VIRTIO_GPU_RESP_OK_MAP_INFO;
    default:
      return 0;
  }
}

static Shadow *
shadow_of(guint32 id)
{
  return id < SHADOW_IDS ? &st.shadow[id] : NULL;
}

/* --- pixel model ------------------------------------------------------------ */

static void
model_detach(Shadow *sh)
{
  g_clear_pointer(&sh->ents, g_free);
  g_clear_pointer(&sh->starts, g_free);
  g_clear_pointer(&sh->mem, vhu_mem_table_unref);
  sh->n_ents = 0;
  sh->backing = 0;
}

static void
model_clear(Shadow *sh)
{
  model_detach(sh);
  g_clear_pointer(&sh->pixels, g_free);
  memset(sh, 0, sizeof *sh);
}

static void
model_clear_all(void)
{
  for (guint i = 0; i < SHADOW_IDS; i++)
    model_clear(&st.shadow[i]);
}

/* The modelled pixels of resource @res_id, or NULL. */
static Shadow *
model_of(guint32 res_id)
{
  Shadow *sh = shadow_of(res_id);

  return st.model_ok && sh && sh->live && sh->pixels ? sh : NULL; /* blobs: not modelled */
}

/* Copies [@off, @off + @len) of the backing out of guest memory, the way
 * the entries say (not the way the device translated them). */
static void
model_read(const Shadow *sh, guint64 off, guint8 *dst, gsize len)
{
  guint lo = 0, hi = sh->n_ents;

  while (hi - lo > 1) {
    guint mid = lo + (hi - lo) / 2;

    if (sh->starts[mid] <= off)
      lo = mid;
    else
      hi = mid;
  }
  for (guint i = lo; i < sh->n_ents && len > 0; i++) {
    guint64 skip, chunk;

    if (off >= sh->starts[i] + sh->ents[i].length)
      continue;
    skip = off - sh->starts[i];
    chunk = MIN(len, sh->ents[i].length - skip);
    for (guint64 done = 0; done < chunk;) {
      guint64 n = chunk - done;
      const guint8 *p = vhu_mem_gpa_to_host(sh->mem, sh->ents[i].addr + skip + done, &n);

      if (!p)
        fail("the backing accepted for a resource is not in guest memory");
      memcpy(dst, p, n);
      dst += n;
      done += n;
    }
    off += chunk;
    len -= chunk;
  }
  if (len > 0)
    fail("a transfer accepted beyond the end of the backing");
}

static void
model_transfer(Shadow *sh, const struct virtio_gpu_rect *r, guint64 offset)
{
  if ((guint64)r->x + r->width > sh->w || (guint64)r->y + r->height > sh->h)
    fail("TRANSFER_TO_HOST_2D %ux%u+%u+%u accepted for a %ux%u resource", r->width, r->height, r->x,
         r->y, sh->w, sh->h);
  for (guint32 h = 0; h < r->height; h++)
    model_read(sh, offset + (guint64)h * sh->w * 4u,
               sh->pixels + ((gsize)(r->y + h) * sh->w + r->x) * 4u, (gsize)r->width * 4u);
}

/* Row @h of @rect as a sink read it (@row) against the model. */
static void
model_check_row(guint32 res_id, const VgpuRect *rect, guint32 h, const guint8 *row,
                const char *what)
{
  Shadow *sh = model_of(res_id);

  if (!sh || (guint64)rect->x + rect->width > sh->w || (guint64)rect->y + rect->height > sh->h)
    return;
  if (memcmp(row, sh->pixels + ((gsize)(rect->y + h) * sh->w + rect->x) * 4u,
             (gsize)rect->width * 4u)
      != 0)
    fail("%s of resource %u shows other pixels than were transferred (row %u of %ux%u+%u+%u)", what,
         res_id, rect->y + h, rect->width, rect->height, rect->x, rect->y);
}

static gboolean
is_blob_command(guint32 type)
{
  return type == VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB || type == VIRTIO_GPU_CMD_SET_SCANOUT_BLOB
         || type == VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB || type == VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB;
}

/* Checks a visible response against what the sinks held when the request
 * was taken, and updates the shadow of the resources: sizes always (to aim
 * requests), pixels and backings only while the model holds (an answer seen
 * late or not at all leaves it behind the device for good). */
static void
check_response(FElem *e, const struct virtio_gpu_ctrl_hdr *resp)
{
  Shadow *sh = shadow_of(e->res_id);
  guint32 t = resp->type;

  if (t < VIRTIO_GPU_RESP_ERR_UNSPEC ? t != ok_type(e->type)
                                     : t > VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
    fail("response type 0x%x to command 0x%x", t, e->type);
  if (e->fenced && (!(resp->flags & VIRTIO_GPU_FLAG_FENCE) || resp->fence_id != e->fence_id))
    fail("fenced command 0x%x answered without its fence", e->type);
  if (t != VIRTIO_GPU_RESP_ERR_UNSPEC
      && ((e->type == VIRTIO_GPU_CMD_GET_EDID && !(e->features & 1ull << VIRTIO_GPU_F_EDID))
          || (e->type == VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID
              && !(e->features & 1ull << VIRTIO_GPU_F_RESOURCE_UUID))
          || (is_blob_command(e->type) && !(e->features & 1ull << VIRTIO_GPU_F_RESOURCE_BLOB))))
    fail("command 0x%x answered 0x%x without its feature negotiated", e->type, t);
  if (t < VIRTIO_GPU_RESP_ERR_UNSPEC
      && (e->type == VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB
          || e->type == VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB))
    fail("command 0x%x answered 0x%x with no host-visible memory", e->type, t);
  if (t != VIRTIO_GPU_RESP_OK_NODATA)
    return;
  switch (e->type) {
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
      if (!vgpu_format_is_valid(e->create_format) || e->create_w == 0 || e->create_h == 0
          || e->create_w > 16384 || e->create_h > 16384 || e->res_id == 0)
        fail("RESOURCE_CREATE_2D %u of %ux%u, format %u accepted", e->res_id, e->create_w,
             e->create_h, e->create_format);
      if (sh) {
        model_clear(sh);
        *sh = (Shadow){ TRUE, e->create_w, e->create_h, e->create_format };
        if (st.model_ok)
          sh->pixels = g_malloc0((gsize)e->create_w * e->create_h * 4u);
      }
      break;
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
      if (e->backing_used)
        fail("command 0x%x gave resource %u's guest memory back while a sink used it", e->type,
             e->res_id);
      if (sh && e->type == VIRTIO_GPU_CMD_RESOURCE_UNREF)
        model_clear(sh);
      else if (sh)
        model_detach(sh);
      break;
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
      if (!e->transfer_empty && e->read)
        fail("TRANSFER_TO_HOST_2D into resource %u while a sink read it", e->res_id);
      if (st.model_ok && sh && sh->pixels && sh->ents && !e->transfer_empty)
        model_transfer(sh, &e->rect, e->offset);
      break;
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
      if (e->res_id == 0 || e->blob_mem != VIRTIO_GPU_BLOB_MEM_GUEST
          || (e->blob_flags & VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE) || e->n_ents == 0
          || e->n_ents > VGPU_MAX_BACKING_ENTRIES)
        fail("RESOURCE_CREATE_BLOB %u (mem %u, flags 0x%x, %u entries) accepted", e->res_id,
             e->blob_mem, e->blob_flags, e->n_ents);
      if (sh) {
        model_clear(sh);
        *sh = (Shadow){ TRUE, DEFAULT_SIDE, DEFAULT_SIDE, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM };
      }
      break;
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
      if (sh && sh->live && !sh->pixels) {
        sh->w = e->create_w;
        sh->h = e->create_h;
      }
      break;
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
      if (e->n_ents == 0 || e->n_ents > VGPU_MAX_BACKING_ENTRIES)
        fail("RESOURCE_ATTACH_BACKING with %u entries accepted", e->n_ents);
      if (sh && sh->live) {
        model_detach(sh);
        for (guint i = 0; i < e->n_ents; i++)
          sh->backing += e->ents[i].length;
      }
      if (st.model_ok && sh && sh->pixels) {
        sh->ents = g_steal_pointer(&e->ents);
        sh->n_ents = e->n_ents;
        sh->starts = g_new(guint64, MAX(sh->n_ents, 1u));
        for (guint i = 0; i < sh->n_ents; i++)
          sh->starts[i] = i ? sh->starts[i - 1] + sh->ents[i - 1].length : 0;
        sh->mem = e->elem.mem ? vhu_mem_table_ref(e->elem.mem) : NULL;
      }
      break;
    default:
      break;
  }
}

/* What a display-info or EDID answer carries beyond its header: nothing
 * for scanouts the device does not have, nothing after the EDID's size (a
 * guest must never see stale host bytes). */
static void
check_payload(FElem *e, const guint8 *resp, gsize got)
{
  if (e->type == VIRTIO_GPU_CMD_GET_DISPLAY_INFO
      && got >= sizeof(struct virtio_gpu_resp_display_info)) {
    struct virtio_gpu_resp_display_info info;

    memcpy(&info, resp, sizeof info);
    for (guint i = st.config.num_scanouts; i < VIRTIO_GPU_MAX_SCANOUTS; i++) {
      if (info.pmodes[i].r.width || info.pmodes[i].r.height || info.pmodes[i].enabled
          || info.pmodes[i].flags)
        fail("display info describes scanout %u of %u", i, st.config.num_scanouts);
    }
  }
  if (e->type == VIRTIO_GPU_CMD_GET_EDID && got >= sizeof(struct virtio_gpu_resp_edid)
      && ((const struct virtio_gpu_ctrl_hdr *)(const void *)resp)->type
             == VIRTIO_GPU_RESP_OK_EDID) {
    struct virtio_gpu_resp_edid edid;

    memcpy(&edid, resp, sizeof edid);
    if (edid.size == 0 || edid.size > sizeof edid.edid || edid.padding != 0)
      fail("EDID of %u bytes", edid.size);
    for (gsize i = edid.size; i < sizeof edid.edid; i++) {
      if (edid.edid[i] != 0)
        fail("EDID byte %zu set beyond its %u bytes", i, edid.size);
    }
  }
}

static void
op_complete(gpointer data, guint qidx, VhuElem *elem, guint32 len)
{
  FElem *e = (FElem *)elem;
  guint8 resp[RESP_MAX];
  gsize got;

  if (qidx != e->qidx)
    fail("element completed on queue %u, submitted on %u", qidx, e->qidx);
  if (len > elem->in_len)
    fail("%u bytes written into a %zu-byte response", len, elem->in_len);
  if (qidx != VGPU_CTRL_QUEUE) {
    if (len != 0)
      fail("request on queue %u answered with %u bytes", qidx, len);
    felem_free(e);
    return;
  }
  if (!g_queue_remove(&st.outstanding, e))
    fail("element completed twice or never submitted");
  if (e == st.submitting)
    st.answered = TRUE;
  if (e->fenced) {
    FElem *head = g_queue_peek_head(&st.outstanding);

    if (head && head->seq < e->seq)
      fail("fence %" G_GUINT64_FORMAT " completed before request %" G_GUINT64_FORMAT, e->fence_id,
           head->seq);
  }
  got = vhu_iov_to_buf(elem->in_sg, elem->in_num, 0, resp, MIN(len, sizeof resp));
  if (got >= sizeof(struct virtio_gpu_ctrl_hdr)) {
    struct virtio_gpu_ctrl_hdr hdr;

    memcpy(&hdr, resp, sizeof hdr);
    if (verbose)
      fprintf(stderr, "#%" G_GUINT64_FORMAT " command 0x%x resource %u: 0x%x\n", e->seq, e->type,
              e->res_id, hdr.type);
    check_response(e, &hdr);
    check_payload(e, resp, got);
  } else {
    st.model_ok = FALSE; /* what it did is unknown */
    if (verbose)
      fprintf(stderr, "#%" G_GUINT64_FORMAT " command 0x%x resource %u: %u bytes answered\n",
              e->seq, e->type, e->res_id, len);
  }
  felem_free(e);
}

static void
op_discard(gpointer data, guint qidx, VhuElem *elem)
{
  FElem *e = (FElem *)elem;

  if (qidx != VGPU_CTRL_QUEUE || !g_queue_remove(&st.outstanding, e))
    fail("discarded an element that is not outstanding");
  felem_free(e);
}

static void
op_wake(gpointer data)
{
  st.wakes++;
}

static const VgpuDeviceOps fuzz_ops = { op_complete, op_discard, op_wake };

/* --- sinks ------------------------------------------------------------------ */

static void
check_scanout_id(guint id)
{
  if (id >= st.config.num_scanouts)
    fail("sink called for scanout %u of %u", id, st.config.num_scanouts);
}

static void
s_set_scanout(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect)
{
  FSink *s = sink;

  check_scanout_id(id);
  if (image) {
    if (!rect || rect->width == 0 || rect->height == 0
        || !vgpu_rect_inside(rect, image->width, image->height))
      fail("scanout %u shows a rectangle outside its image", id);
    s->scanout[id].rect = *rect;
  }
  s->scanout[id].image = image;
}

/* @rect of @image shown at (@dst_x, @dst_y): what a display relies on. */
static void
check_update(FSink *s, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
             guint32 dst_y)
{
  const VgpuRect *sr;

  check_scanout_id(id);
  if (!vgpu_rect_inside(rect, image->width, image->height))
    fail("update %ux%u+%u+%u outside its %ux%u image", rect->width, rect->height, rect->x, rect->y,
         image->width, image->height);
  if (!s->iface->set_scanout)
    return; /* not told what the scanout shows */
  sr = &s->scanout[id].rect;
  if (s->scanout[id].image != image)
    fail("update of scanout %u for an image it does not show", id);
  if (!vgpu_rect_inside(rect, image->width, image->height) || rect->x < sr->x || rect->y < sr->y
      || (guint64)rect->x + rect->width > (guint64)sr->x + sr->width
      || (guint64)rect->y + rect->height > (guint64)sr->y + sr->height || dst_x != rect->x - sr->x
      || dst_y != rect->y - sr->y)
    fail("update %ux%u+%u+%u at %u,%u outside scanout %u (%ux%u+%u+%u)", rect->width, rect->height,
         rect->x, rect->y, dst_x, dst_y, id, sr->width, sr->height, sr->x, sr->y);
}

static void
s_update(gpointer sink, guint id, VgpuImage *image, const VgpuRect *rect, guint32 dst_x,
         guint32 dst_y)
{
  check_update(sink, id, image, rect, dst_x, dst_y);
  sink_sum += hash_rect(image, rect);
  for (guint32 h = 0; h < rect->height; h++)
    model_check_row(st.cur_res_id, rect, h,
                    image->data + (gsize)(rect->y + h) * image->stride + (gsize)rect->x * 4u,
                    "update");
  if (next_hold_bit() && st.n_holds < MAX_HOLDS)
    add_hold(HOLD_IMAGE, image);
}

static void
s_update_guest(gpointer sink, guint id, VgpuImage *image, VgpuBacking *backing, guint64 offset,
               const VgpuRect *rect, guint32 dst_x, guint32 dst_y)
{
  g_autoptr(GArray) iov = g_array_new(FALSE, FALSE, sizeof(struct iovec));
  g_autofree guint8 *rows = NULL;
  guint64 row = (guint64)rect->width * 4u, end;
  guint64 sum = 0;
  gsize got = 0;

  check_update(sink, id, image, rect, dst_x, dst_y);
  if (rect->width == 0 || rect->height == 0)
    return;
  /* Row h at offset + h * stride: the last byte must lie in the backing. */
  if (!g_uint64_checked_add(&end, offset, (guint64)(rect->height - 1) * image->stride)
      || !g_uint64_checked_add(&end, end, row) || end > vgpu_backing_get_size(backing))
    fail("guest rows %ux%u at offset %" G_GUINT64_FORMAT " beyond a %" G_GUINT64_FORMAT
         "-byte backing",
         rect->width, rect->height, offset, vgpu_backing_get_size(backing));
  /* Gathered as a display writer does, then compared row by row. */
  for (guint32 h = 0; h < rect->height; h++)
    vgpu_backing_append_iov(backing, offset + (guint64)h * image->stride, (gsize)row, iov);
  rows = g_malloc((gsize)row * rect->height);
  for (guint i = 0; i < iov->len; i++) {
    const struct iovec *v = &g_array_index(iov, struct iovec, i);

    memcpy(rows + got, v->iov_base, v->iov_len);
    got += v->iov_len;
  }
  if (got != (gsize)row * rect->height)
    fail("%zu bytes of guest rows gathered for %ux%u", got, rect->width, rect->height);
  for (gsize b = 0; b < got; b++)
    sum += rows[b];
  sink_sum += sum;
  for (guint32 h = 0; h < rect->height; h++)
    model_check_row(st.cur_res_id, rect, h, rows + (gsize)h * row, "update_guest");
  if (next_hold_bit() && st.n_holds < MAX_HOLDS)
    add_hold(next_hold_bit() ? HOLD_BACKING_LOAN : HOLD_BACKING_READ, backing);
}

/* A blob scanout: every pixel of the scanout's rectangle lies in the
 * blob, at offset + y * stride + x * 4; read its first and last rows. */
static void
s_scanout_blob(gpointer sink, guint id, VgpuBacking *backing, guint64 offset, guint32 stride)
{
  FSink *s = sink;
  const VgpuRect *r = &s->scanout[id].rect;
  guint64 end;
  guint8 px[4];

  check_scanout_id(id);
  if (!s->scanout[id].image)
    fail("scanout_blob for disabled scanout %u", id);
  if (stride < (guint64)r->width * 4u
      || !g_uint64_checked_add(&end, offset, (guint64)(r->height - 1) * stride)
      || !g_uint64_checked_add(&end, end, (guint64)r->width * 4u)
      || end > vgpu_backing_get_size(backing))
    fail("blob scanout %ux%u, stride %u from offset %" G_GUINT64_FORMAT
         " beyond a %" G_GUINT64_FORMAT "-byte blob",
         r->width, r->height, stride, offset, vgpu_backing_get_size(backing));
  vgpu_backing_read(backing, offset, px, sizeof px);
  sink_sum += px[0];
  vgpu_backing_read(backing, end - sizeof px, px, sizeof px);
  sink_sum += px[3];
}

static void
s_cursor_update(gpointer sink, guint id, const guint32 *pixels, guint32 hot_x, guint32 hot_y,
                guint32 x, guint32 y)
{
  guint32 want[VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE];
  Shadow *sh = model_of(st.cur_res_id);
  guint64 sum = 0;

  check_scanout_id(id);
  for (guint i = 0; i < VGPU_CURSOR_SIZE * VGPU_CURSOR_SIZE; i++)
    sum += pixels[i];
  sink_sum += sum;
  if (sh && sh->w == VGPU_CURSOR_SIZE && sh->h == VGPU_CURSOR_SIZE) {
    vgpu_format_convert(sh->format, sh->pixels, sh->w, sh->h, sh->w * 4u, 0, 0, sh->w, sh->h,
                        PIXMAN_a8r8g8b8, (guint8 *)want, VGPU_CURSOR_SIZE * 4u);
    if (memcmp(want, pixels, sizeof want) != 0)
      fail("cursor of resource %u shows other pixels than were transferred", st.cur_res_id);
  }
}

static void
s_cursor_move(gpointer sink, guint id, guint32 x, guint32 y, gboolean visible)
{
  check_scanout_id(id);
}

static gboolean
hold_query(VgpuQuery *q, gboolean edid)
{
  if (!st.hold_queries || st.n_queries == MAX_QUERIES)
    return FALSE;
  st.queries[st.n_queries++] = (HeldQuery){ q, edid };
  return TRUE;
}

static gboolean
s_query_display_info(gpointer sink, VgpuQuery *q)
{
  return hold_query(q, FALSE);
}

static gboolean
s_query_edid(gpointer sink, guint id, VgpuQuery *q)
{
  check_scanout_id(id);
  return hold_query(q, TRUE);
}

/* Asks for materialised images; cannot answer display queries. */
static const VgpuSinkIface image_sink_iface = {
  s_set_scanout, s_update, s_cursor_update, s_cursor_move, NULL, NULL, NULL,
};

/* Only reads guest memory (every callback is optional to the device). */
static const VgpuSinkIface sparse_sink_iface = {
  .update_guest = s_update_guest,
};

static const VgpuSinkIface guest_sink_iface = {
  s_set_scanout,        s_update,     s_cursor_update, s_cursor_move,
  s_query_display_info, s_query_edid, s_update_guest,  s_scanout_blob,
};

/* Answers the oldest held query: nothing (a timeout), a good reply, or a
 * malformed one. */
static void
answer_query(Input *in)
{
  union {
    struct virtio_gpu_resp_display_info info;
    struct virtio_gpu_resp_edid edid;
  } reply;
  HeldQuery q;
  guint8 how = in_u8(in);
  gsize size, body = (gsize)(how >> 5) * 12u; /* bytes after the header from the input */

  if (st.n_queries == 0)
    return;
  q = st.queries[0];
  memmove(&st.queries[0], &st.queries[1], --st.n_queries * sizeof q);
  if (how % 5 == 0) {
    vgpu_device_query_done(st.dev, q.query, NULL, 0);
    return;
  }
  memset(&reply, 0, sizeof reply);
  for (gsize i = 0; i < body; i++)
    ((guint8 *)&reply)[i + sizeof reply.info.hdr] = in_u8(in);
  if (q.edid) {
    reply.edid.hdr.type = VIRTIO_GPU_RESP_OK_EDID;
    reply.edid.size = (how >> 3) & 1 ? in_u32(in) : 1u + in_u16(in) % 1024u;
    size = sizeof reply.edid;
  } else {
    reply.info.hdr.type = VIRTIO_GPU_RESP_OK_DISPLAY_INFO;
    size = sizeof reply.info;
  }
  switch (how % 5) {
    case 1: /* as built */
      break;
    case 2: /* short */
      size = in_u16(in) % (size + 1);
      break;
    case 3: /* wrong type */
      reply.info.hdr.type = in_u32(in);
      break;
    case 4: /* EDID cut after its announced size, or before */
      if (q.edid)
        size = offsetof(struct virtio_gpu_resp_edid, edid) + MIN(reply.edid.size, 1024u)
               - (how >> 4 & 1);
      break;
  }
  vgpu_device_query_done(st.dev, q.query, &reply, size);
}

static void
answer_all_queries(void)
{
  while (st.n_queries > 0) {
    VgpuQuery *q = st.queries[0].query;

    memmove(&st.queries[0], &st.queries[1], --st.n_queries * sizeof st.queries[0]);
    vgpu_device_query_done(st.dev, q, NULL, 0);
  }
}

/* --- building requests ------------------------------------------------------ */

static const guint32 formats[] = {
  VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM, VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
  VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM, VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
  VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM, VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
  VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM, VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
};

static const guint32 odd_values[] = {
  0,     1,     63,         64,         65,         4095,       4096,       16383,
  16384, 16385, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0x40000000, 0x3fffffff,
};

static guint32
gen_res_id(Input *in)
{
  guint8 b = in_u8(in);

  return b < 0xf0 ? b % SHADOW_IDS : in_u32(in);
}

static guint32
gen_scanout_id(Input *in)
{
  guint8 b = in_u8(in);

  return b < 0xf0 ? b % 5u : in_u32(in);
}

static guint32
gen_side(Input *in)
{
  guint8 m = in_u8(in);

  switch (m % 5) {
    case 0:
      return DEFAULT_SIDE; /* cursor size */
    case 1:
    case 2:
      return 1u + in_u8(in);
    case 3:
      return 1u + in_u16(in) % 2048u;
    default:
      return m & 0x80 ? in_u32(in) : odd_values[(m >> 3) % G_N_ELEMENTS(odd_values)];
  }
}

static void
size_of(guint32 res_id, guint32 *w, guint32 *h)
{
  Shadow *sh = shadow_of(res_id);

  *w = sh && sh->live ? sh->w : DEFAULT_SIDE;
  *h = sh && sh->live ? sh->h : DEFAULT_SIDE;
}

/* A rectangle for a @w x @h resource: all of it, inside, at the edges and
 * one past them, empty, or anything. */
static struct virtio_gpu_rect
gen_rect(Input *in, guint32 w, guint32 h)
{
  struct virtio_gpu_rect r = { 0, 0, w, h };
  guint8 m = in_u8(in);

  switch (m % 8) {
    case 0:
      break;
    case 1:
    case 2:
      r.x = w ? in_u16(in) % w : 0;
      r.y = h ? in_u16(in) % h : 0;
      r.width = w - r.x ? 1u + in_u16(in) % (w - r.x) : 0;
      r.height = h - r.y ? 1u + in_u16(in) % (h - r.y) : 0;
      break;
    case 3:
      r.x = in_u8(in);
      r.y = in_u8(in);
      r.width = 1u + in_u8(in);
      r.height = 1u + in_u8(in);
      break;
    case 4: /* one past an edge */
      if (m & 0x10)
        r.width++;
      else if (m & 0x20)
        r.height++;
      else if (m & 0x40)
        r.x = 1;
      else
        r.y = 1;
      break;
    case 5:
      r.x = in_u8(in);
      r.y = in_u8(in);
      if (m & 0x10)
        r.width = 0;
      else
        r.height = 0;
      break;
    case 6:
      r.x = in_u32(in);
      r.y = in_u32(in);
      r.width = in_u32(in);
      r.height = in_u32(in);
      break;
    default: /* wraps around 2^32 */
      r.x = G_MAXUINT32 - in_u8(in);
      r.width = w + 2u;
      if (m & 0x10) {
        r.y = r.x;
        r.height = r.width;
        r.x = 0;
        r.width = w;
      }
      break;
  }
  return r;
}

static guint64
gen_offset(Input *in, const struct virtio_gpu_rect *r, guint32 res_id)
{
  Shadow *sh = shadow_of(res_id);
  guint32 w, h;
  guint64 natural;
  guint8 m = in_u8(in);

  size_of(res_id, &w, &h);
  natural = (guint64)r->y * w * 4u + (guint64)r->x * 4u;
  switch (m % 6) {
    case 0:
      return 0;
    case 1:
    case 2:
      return natural;
    case 3:
      return natural + (gint8)in_u8(in);
    case 4:
      return (sh ? sh->backing : 0) - in_u16(in);
    default:
      return m & 0x80 ? in_u64(in) : in_u16(in);
  }
}

static const guint64 outside[] = {
  0,         A_GPA - 0x1000,         A_GPA - 1,           B_GPA + B_SIZE, B_GPA + B_SIZE - 8,
  B_FAR_GPA, B_FAR_GPA + B_SIZE - 4, G_MAXUINT64 - 0xfff, G_MAXUINT64,    1ull << 63,
};

/* One backing entry: into A, at its start, across A and B, into B, outside
 * memory, anywhere, right after the previous one, or the previous again. */
static struct virtio_gpu_mem_entry
gen_entry(Input *in, guint64 need, guint n, const struct virtio_gpu_mem_entry *prev)
{
  struct virtio_gpu_mem_entry e = { 0, 0, 0 };
  guint8 m = in_u8(in);
  guint64 room = 0;

  switch (m & 7) {
    case 0:
      e.addr = A_GPA + (in_u32(in) % A_SIZE & ~3u);
      break;
    case 1:
      e.addr = A_GPA;
      break;
    case 2:
      e.addr = B_GPA - in_u16(in) % 0x2000u;
      break;
    case 3:
      e.addr = B_GPA + in_u16(in) % B_SIZE;
      break;
    case 4:
      e.addr = outside[in_u8(in) % G_N_ELEMENTS(outside)];
      break;
    case 5:
      e.addr = in_u64(in);
      break;
    case 6:
      e.addr = prev ? prev->addr + prev->length : A_GPA;
      break;
    default:
      if (prev)
        return *prev;
      e.addr = A_GPA;
      break;
  }
  if (e.addr >= A_GPA && e.addr < B_GPA + B_SIZE)
    room = B_GPA + B_SIZE - e.addr;
  switch (m >> 3 & 7) {
    case 0:
      e.length = (guint32)MIN((need + n - 1) / MAX(n, 1u), G_MAXUINT32);
      break;
    case 1:
      e.length = (guint32)MIN(need, G_MAXUINT32);
      break;
    case 2:
      e.length = 4096;
      break;
    case 3:
      e.length = 1u + in_u8(in);
      break;
    case 4:
      e.length = 0;
      break;
    case 5:
      e.length = in_u32(in);
      break;
    case 6:
      e.length = in_u16(in);
      break;
    default:
      e.length = (guint32)MIN(room, G_MAXUINT32);
      break;
  }
  e.padding = m & 0x40 ? in_u32(in) : 0;
  return e;
}

typedef struct {
  guint8 *buf;
  gsize len;
} Bytes;

/* RESOURCE_ATTACH_BACKING with its entries. */
static Bytes
gen_attach(Input *in, guint32 res_id)
{
  struct virtio_gpu_resource_attach_backing a = { { VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING } };
  struct virtio_gpu_mem_entry *ents;
  guint32 w, h;
  guint64 need;
  guint8 m = in_u8(in);
  guint n, pattern;
  Bytes b;

  size_of(res_id, &w, &h);
  need = (guint64)w * h * 4u;
  switch (m % 8) {
    case 6:
      n = 0;
      break;
    case 7: /* many: a few entries repeated (an input cannot spell them all) */
      n = in_u16(in) % MANY_ENTRIES;
      if (m & 0x10)
        n = VGPU_MAX_BACKING_ENTRIES + (m >> 5 & 1);
      break;
    default:
      n = 1u + in_u8(in) % 4u;
      break;
  }
  pattern = MIN(n, 4u);
  ents = g_new0(struct virtio_gpu_mem_entry, MAX(n, 1u));
  for (guint i = 0; i < pattern; i++)
    ents[i] = gen_entry(in, need, pattern, i ? &ents[i - 1] : NULL);
  for (guint i = pattern; i < n; i++) {
    ents[i] = ents[i % pattern];
    if (m & 0x20)
      ents[i].addr += (guint64)(i / pattern) * ents[i].length; /* walk on */
  }
  a.resource_id = res_id;
  a.nr_entries = n;
  if (m & 0x80) /* a count that does not match what follows */
    a.nr_entries = m & 0x40 ? in_u32(in) : n + 1u + in_u8(in) % 2u;
  b.len = sizeof a + (gsize)n * sizeof *ents;
  b.buf = g_malloc(b.len);
  memcpy(b.buf, &a, sizeof a);
  memcpy(b.buf + sizeof a, ents, (gsize)n * sizeof *ents);
  g_free(ents);
  return b;
}

/* RESOURCE_CREATE_BLOB with its entries: mostly a guest blob of the
 * entries' size, sometimes other memory kinds, flags or sizes. */
static Bytes
gen_create_blob(Input *in, guint32 res_id)
{
  struct virtio_gpu_resource_create_blob c = { { VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB } };
  struct virtio_gpu_mem_entry ents[4];
  guint8 m = in_u8(in);
  guint n = m & 0x40 ? in_u8(in) % 5u : 1u + in_u8(in) % 4u;
  guint64 need = (guint64)gen_side(in) * gen_side(in) * 4u, size = 0;
  Bytes b;

  for (guint i = 0; i < n; i++) {
    ents[i] = gen_entry(in, need, n, i ? &ents[i - 1] : NULL);
    size += ents[i].length;
  }
  c.resource_id = res_id;
  c.blob_mem = m & 1 ? in_u8(in) % 4u : VIRTIO_GPU_BLOB_MEM_GUEST;
  c.blob_flags = m & 2 ? in_u8(in) % 8u : VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE;
  c.blob_id = m & 4 ? in_u8(in) : 0;
  c.size = m & 8 ? (m & 0x80 ? in_u64(in) : size + (gint8)in_u8(in)) : size;
  c.nr_entries = m & 0x10 ? (m & 0x20 ? in_u32(in) : n + 1u) : n;
  b.len = sizeof c + (gsize)n * sizeof *ents;
  b.buf = g_malloc(b.len);
  memcpy(b.buf, &c, sizeof c);
  memcpy(b.buf + sizeof c, ents, (gsize)n * sizeof *ents);
  return b;
}

/* The request body (after its header) for control command @type, built into
 * @req (zeroed, large enough for any fixed-size command). */
static gsize
gen_ctrl_body(Input *in, guint32 type, guint8 *req)
{
  guint32 w, h;

  switch (type) {
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: {
      struct virtio_gpu_resource_create_2d *c = (void *)req;
      guint8 f;

      c->resource_id = gen_res_id(in);
      f = in_u8(in);
      c->format = f < 0xf8 ? formats[f % G_N_ELEMENTS(formats)] : in_u32(in);
      c->width = gen_side(in);
      c->height = gen_side(in);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
    case VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: {
      struct virtio_gpu_resource_unref *c = (void *)req;

      c->resource_id = gen_res_id(in);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_SET_SCANOUT: {
      struct virtio_gpu_set_scanout *c = (void *)req;

      c->scanout_id = gen_scanout_id(in);
      c->resource_id = gen_res_id(in);
      size_of(c->resource_id, &w, &h);
      c->r = gen_rect(in, w, h);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH: {
      struct virtio_gpu_resource_flush *c = (void *)req;

      c->resource_id = gen_res_id(in);
      size_of(c->resource_id, &w, &h);
      c->r = gen_rect(in, w, h);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: {
      struct virtio_gpu_transfer_to_host_2d *c = (void *)req;

      c->resource_id = gen_res_id(in);
      size_of(c->resource_id, &w, &h);
      c->r = gen_rect(in, w, h);
      c->offset = gen_offset(in, &c->r, c->resource_id);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_GET_EDID: {
      struct virtio_gpu_cmd_get_edid *c = (void *)req;

      c->scanout = gen_scanout_id(in);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_GET_DISPLAY_INFO:
      return sizeof(struct virtio_gpu_ctrl_hdr);
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB: {
      struct virtio_gpu_set_scanout_blob *c = (void *)req;
      guint8 m = in_u8(in), f = in_u8(in);

      c->scanout_id = gen_scanout_id(in);
      c->resource_id = gen_res_id(in);
      c->width = m & 1 ? gen_side(in) : in_u8(in) % 96u + 1u;
      c->height = m & 2 ? gen_side(in) : in_u8(in) % 96u + 1u;
      c->format = f < 0xf8 ? formats[f % G_N_ELEMENTS(formats)] : in_u32(in);
      c->strides[0] = m & 4 ? in_u32(in) : c->width * 4u + (in_u8(in) & 0x3cu);
      c->offsets[0] = m & 8 ? in_u32(in) : (guint32)in_u8(in) * 4u;
      c->r = gen_rect(in, c->width, c->height);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB: {
      struct virtio_gpu_resource_map_blob *c = (void *)req;

      c->resource_id = gen_res_id(in);
      c->offset = in_u64(in);
      return sizeof *c;
    }
    case VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB: {
      struct virtio_gpu_resource_unmap_blob *c = (void *)req;

      c->resource_id = gen_res_id(in);
      return sizeof *c;
    }
    default: { /* anything: unknown, 3D, cursor commands on this queue */
      gsize len = sizeof(struct virtio_gpu_ctrl_hdr) + in_u8(in) % 64u;

      for (gsize i = sizeof(struct virtio_gpu_ctrl_hdr); i < len; i++)
        req[i] = in_u8(in);
      return len;
    }
  }
}

/* Splits @b into the element's readable iovecs: one, or two at a random
 * point.  Each piece is its own allocation, so reading past it is caught. */
static void
set_out(Input *in, FElem *e, Bytes b, gboolean split)
{
  gsize at = split ? in_u16(in) % (b.len + 1) : b.len;

  e->out[0] = (struct iovec){ g_memdup2(b.buf, at), at };
  e->out[1] = (struct iovec){ g_memdup2(b.buf + at, b.len - at), b.len - at };
  e->elem.out_sg = e->out;
  e->elem.out_num = 2;
  e->elem.out_len = b.len;
}

/* Response buffer: ample, a bare header, tiny, or two pieces. */
static void
set_in(Input *in, FElem *e, guint mode)
{
  gsize len[2] = { 0, 0 };

  switch (mode) {
    case 0:
      len[0] = RESP_MAX;
      break;
    case 1:
      len[0] = sizeof(struct virtio_gpu_ctrl_hdr);
      break;
    case 2:
      len[0] = in_u8(in) % 64u;
      break;
    default: {
      gsize total = sizeof(struct virtio_gpu_ctrl_hdr) + in_u16(in) % RESP_MAX;

      len[0] = in_u16(in) % (total + 1);
      len[1] = total - len[0];
      break;
    }
  }
  for (guint i = 0; i < 2; i++)
    e->in[i] = (struct iovec){ len[i] ? g_malloc0(len[i]) : NULL, len[i] };
  e->elem.in_sg = e->in;
  e->elem.in_num = len[1] ? 2 : len[0] ? 1 : 0;
  e->elem.in_len = len[0] + len[1];
}

static FElem *
felem_new(guint qidx)
{
  FElem *e = g_new0(FElem, 1);

  e->qidx = qidx;
  e->seq = st.next_seq++;
  e->features = st.features;
  e->elem.mem = st.mem ? vhu_mem_table_ref(st.mem) : NULL;
  return e;
}

/* Submits a control request; when refused, the sinks let go of frames one
 * by one until the device wakes, as the daemon would retry it. */
static void
submit_ctrl(FElem *e)
{
  guint32 type = e->type, res_id = e->res_id; /* e may be gone after submit */

  g_queue_push_tail(&st.outstanding, e);
  st.cur_res_id = e->res_id;
  st.submitting = e;
  st.answered = FALSE;
  for (;;) {
    gint wakes = st.wakes;

    /* Taken now, the request is answered now or later (a fence held back):
     * judge it by what is held at this point. */
    e->backing_used = held(e->res_id, HOLD_BACKING_READ) || held(e->res_id, HOLD_BACKING_LOAN);
    e->read = held(e->res_id, HOLD_IMAGE) || held(e->res_id, HOLD_BACKING_READ);
    if (vgpu_device_submit(st.dev, VGPU_CTRL_QUEUE, &e->elem))
      break;
    if (verbose)
      fprintf(stderr, "command 0x%x refused, %u frames held\n", type, st.n_holds);

    do {
      if (st.n_holds == 0)
        fail("command 0x%x refused with no frame held: it would wait forever", type);
      release_hold(0);
    } while (st.wakes == wakes);
  }
  /* Done but answered later (a fence behind a display query): the model
   * would learn of it too late. */
  if (!st.answered && type != VIRTIO_GPU_CMD_GET_DISPLAY_INFO && type != VIRTIO_GPU_CMD_GET_EDID)
    st.model_ok = FALSE;
  st.submitting = NULL;
  /* A sink may go on reading the image of a resource that is gone; the id
   * can then name a new one. */
  if (type == VIRTIO_GPU_CMD_RESOURCE_UNREF)
    orphan_holds(res_id, FALSE);
}

/* Reads the request as the device will (after cutting and padding it may
 * say something else than was built). */
static void
parse_ctrl(FElem *e, const guint8 *buf, gsize len)
{
  union {
    struct virtio_gpu_ctrl_hdr hdr;
    struct virtio_gpu_resource_create_2d create;
    struct virtio_gpu_resource_unref unref; /* also detach, assign uuid */
    struct virtio_gpu_set_scanout scanout;
    struct virtio_gpu_resource_flush flush;
    struct virtio_gpu_transfer_to_host_2d transfer;
    struct virtio_gpu_resource_attach_backing attach;
    struct virtio_gpu_resource_create_blob create_blob;
    struct virtio_gpu_set_scanout_blob scanout_blob;
    struct virtio_gpu_resource_map_blob map_blob; /* also unmap */
  } r;

  memset(&r, 0, sizeof r);
  memcpy(&r, buf, MIN(len, sizeof r));
  if (len < sizeof r.hdr)
    return; /* no command, no fence: answered UNSPEC */
  e->type = r.hdr.type;
  e->fenced = (r.hdr.flags & VIRTIO_GPU_FLAG_FENCE) != 0;
  e->fence_id = r.hdr.fence_id;
  switch (e->type) {
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_2D:
      e->res_id = r.create.resource_id;
      e->create_format = r.create.format;
      e->create_w = r.create.width;
      e->create_h = r.create.height;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_UNREF:
    case VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING:
    case VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID:
      e->res_id = r.unref.resource_id;
      break;
    case VIRTIO_GPU_CMD_SET_SCANOUT:
      e->res_id = r.scanout.resource_id;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_FLUSH:
      e->res_id = r.flush.resource_id;
      break;
    case VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D:
      e->res_id = r.transfer.resource_id;
      e->rect = r.transfer.r;
      e->offset = r.transfer.offset;
      e->transfer_empty = r.transfer.r.width == 0 || r.transfer.r.height == 0;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB:
      e->res_id = r.create_blob.resource_id;
      e->blob_mem = r.create_blob.blob_mem;
      e->blob_flags = r.create_blob.blob_flags;
      if (len >= sizeof r.create_blob
          && r.create_blob.nr_entries <= (len - sizeof r.create_blob) / sizeof *e->ents)
        e->n_ents = r.create_blob.nr_entries;
      break;
    case VIRTIO_GPU_CMD_SET_SCANOUT_BLOB:
      e->res_id = r.scanout_blob.resource_id;
      e->create_w = r.scanout_blob.width;
      e->create_h = r.scanout_blob.height;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB:
    case VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB:
      e->res_id = r.map_blob.resource_id;
      break;
    case VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING:
      e->res_id = r.attach.resource_id;
      /* Accepted, the device has read nr_entries entries after it. */
      if (len >= sizeof r.attach
          && r.attach.nr_entries <= (len - sizeof r.attach) / sizeof *e->ents) {
        e->n_ents = r.attach.nr_entries;
        e->ents = g_memdup2(buf + sizeof r.attach, (gsize)e->n_ents * sizeof *e->ents);
      }
      break;
    default:
      break;
  }
}

static const guint32 ctrl_commands[] = {
  VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
  VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
  VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
  VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
  VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
  VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
  VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
  VIRTIO_GPU_CMD_RESOURCE_FLUSH,
  VIRTIO_GPU_CMD_RESOURCE_FLUSH,
  VIRTIO_GPU_CMD_RESOURCE_FLUSH,
  VIRTIO_GPU_CMD_SET_SCANOUT,
  VIRTIO_GPU_CMD_SET_SCANOUT,
  VIRTIO_GPU_CMD_RESOURCE_UNREF,
  VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
  VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
  VIRTIO_GPU_CMD_GET_EDID,
  VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
  0 /* raw */,
  VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
  VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
  VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
  VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
  VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
  VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
};

/* Control request.  Frame byte: bit 0 fence, 1 ring index, 2 truncated,
 * 3 trailing bytes, 4-5 response buffer, 6 request in two pieces, 7 other
 * header fields set. */
static void
op_ctrl(Input *in, guint8 sel)
{
  guint32 type = ctrl_commands[sel % G_N_ELEMENTS(ctrl_commands)];
  guint8 frame = in_u8(in);
  guint8 req[sizeof(struct virtio_gpu_ctrl_hdr) + 64 + 64] __attribute__((aligned(8)));
  struct virtio_gpu_ctrl_hdr hdr = { 0 };
  FElem *e = felem_new(VGPU_CTRL_QUEUE);
  Bytes b;

  if (type == 0) {
    guint8 how = in_u8(in), low = in_u8(in), high = in_u8(in);

    /* a 32-bit value, or near the 2D, 3D, cursor and response ranges */
    type = how & 1 ? in_u32(in) : 0x100u + low % 0x30u + (high & 3u) * 0x100u;
  }
  hdr.type = type;
  if (frame & 1) {
    hdr.flags |= VIRTIO_GPU_FLAG_FENCE;
    hdr.fence_id = ++st.next_fence;
  }
  if (frame & 2) {
    hdr.flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
    hdr.ring_idx = in_u8(in);
  }
  if (frame & 0x80) {
    hdr.ctx_id = in_u32(in);
    hdr.flags |= in_u32(in) & ~(guint32)VIRTIO_GPU_FLAG_FENCE;
    hdr.padding[0] = in_u8(in);
  }
  if (type == VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING) {
    b = gen_attach(in, gen_res_id(in));
  } else if (type == VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB) {
    b = gen_create_blob(in, gen_res_id(in));
  } else {
    memset(req, 0, sizeof req);
    b.len = gen_ctrl_body(in, type, req);
    b.buf = g_memdup2(req, b.len);
  }
  memcpy(b.buf, &hdr, MIN(sizeof hdr, b.len));
  if (frame & 4) { /* cut short */
    gsize cut = 1u + in_u8(in) % 32u;

    b.len -= MIN(b.len, cut);
  }
  if (frame & 8) { /* trailing bytes */
    gsize extra = 1u + in_u8(in) % 16u;

    b.buf = g_realloc(b.buf, b.len + extra);
    for (gsize i = 0; i < extra; i++)
      b.buf[b.len + i] = in_u8(in);
    b.len += extra;
  }
  parse_ctrl(e, b.buf, b.len);
  set_out(in, e, b, frame & 0x40);
  g_free(b.buf);
  set_in(in, e, frame >> 4 & 3);
  submit_ctrl(e);
}

/* Cursor request: update, move, or another type; sometimes short, with a
 * response buffer (the device writes none). */
static void
op_cursor(Input *in, guint8 sel)
{
  struct virtio_gpu_update_cursor c = { { 0 } };
  FElem *e = felem_new(VGPU_CURSOR_QUEUE);
  guint8 m = in_u8(in);
  Bytes b = { (guint8 *)&c, sizeof c };

  switch (sel % 4) {
    case 0:
    case 1:
      c.hdr.type = VIRTIO_GPU_CMD_UPDATE_CURSOR;
      break;
    case 2:
      c.hdr.type = VIRTIO_GPU_CMD_MOVE_CURSOR;
      break;
    default:
      c.hdr.type = in_u8(in) & 1 ? in_u32(in) : VIRTIO_GPU_CMD_GET_DISPLAY_INFO;
      break;
  }
  c.pos.scanout_id = gen_scanout_id(in);
  c.pos.x = m & 1 ? in_u32(in) : in_u16(in) % 2048u;
  c.pos.y = m & 1 ? in_u32(in) : in_u16(in) % 2048u;
  c.resource_id = gen_res_id(in);
  c.hot_x = in_u8(in);
  c.hot_y = in_u8(in);
  if (m & 2)
    b.len -= 1u + in_u8(in) % sizeof c;
  e->type = c.hdr.type;
  e->res_id = c.resource_id;
  set_out(in, e, b, m & 4);
  set_in(in, e, m >> 3 & 3);
  st.cur_res_id = e->res_id;
  if (!vgpu_device_submit(st.dev, VGPU_CURSOR_QUEUE, &e->elem))
    fail("cursor request refused");
}

/* Guest writes into A or B (the device never writes guest memory). */
static void
op_write_guest(Input *in)
{
  guint8 m = in_u8(in);
  gboolean to_b = m & 1;
  guint8 *base = to_b ? region_b : region_a;
  gsize size = to_b ? B_SIZE : A_SIZE;
  Dirty *d = to_b ? &st.dirty_b : &st.dirty_a;
  gsize off = in_u32(in) % size;
  gsize want = 1u + (m & 2 ? in_u16(in) % 8192u : in_u8(in));
  gsize len = MIN(want, size - off);
  guint8 fill = in_u8(in);

  for (gsize i = 0; i < len; i++)
    base[off + i] = m & 4 ? fill : in_u8(in);
  st.model_ok = FALSE; /* pending pixels may change now */
  d->lo = MIN(d->lo, off);
  d->hi = MAX(d->hi, off + len);
}

static void
check_budget(void)
{
  VgpuDeviceStats s;

  vgpu_device_get_stats(st.dev, &s);
  if (s.hostmem_used > st.config.max_hostmem)
    fail("%" G_GUINT64_FORMAT " bytes charged, budget %" G_GUINT64_FORMAT, s.hostmem_used,
         st.config.max_hostmem);
}

/* After a reset with no frame held, nothing is left charged. */
static void
check_empty(void)
{
  VgpuDeviceStats s;

  vgpu_device_get_stats(st.dev, &s);
  if (s.resources != 0 || (st.n_holds == 0 && s.hostmem_used != 0))
    fail("after a reset: %u resources, %" G_GUINT64_FORMAT " bytes charged", s.resources,
         s.hostmem_used);
}

static void
op_reset(void)
{
  vgpu_device_reset(st.dev);
  st.features = 0;
  orphan_holds(0, TRUE);
  model_clear_all();
  check_empty();
}

/* The rest of the device's API a daemon calls. */
static void
op_misc(Input *in)
{
  guint8 m = in_u8(in);

  switch (m % 7) {
    case 6: { /* a queue the device does not have */
      FElem *e = felem_new(VGPU_NUM_QUEUES + in_u8(in) % 3u);

      set_out(in, e, (Bytes){ (guint8 *)&m, 1 }, FALSE);
      set_in(in, e, 2);
      if (!vgpu_device_submit(st.dev, e->qidx, &e->elem))
        fail("request on queue %u refused", e->qidx);
      break;
    }
    case 0: {
      guint8 cfg[16];

      vgpu_device_get_config(st.dev, cfg, in_u8(in) % (sizeof cfg + 1));
      break;
    }
    case 1: {
      guint8 buf[32];
      guint32 offset = in_u8(in) % 24u;
      gsize size = in_u8(in) % (sizeof buf + 1);

      for (gsize i = 0; i < size; i++)
        buf[i] = in_u8(in);
      vgpu_device_set_config(st.dev, offset, buf, size);
      break;
    }
    case 2:
      vgpu_device_flush(st.dev);
      break;
    case 3:
      vgpu_device_sync_images(st.dev);
      break;
    case 4: {
      guint32 res_id = gen_res_id(in);
      VgpuImage *img = vgpu_device_get_resource_image(st.dev, res_id);
      VgpuRect all;

      if (!img)
        break;
      all = (VgpuRect){ 0, 0, img->width, img->height };
      sink_sum += hash_rect(img, &all);
      if (vgpu_image_is_busy(img))
        break; /* pending pixels are left where they are */
      for (guint32 h = 0; h < all.height; h++)
        model_check_row(res_id, &all, h, img->data + (gsize)h * img->stride, "image");
      break;
    }
    default:
      st.features = in_u64(in);
      vgpu_device_set_features(st.dev, st.features);
      break;
  }
}

/* One operation; the selector byte picks it:
 *   0-143   control request (command from the real set, weighted)
 *   144-175 cursor request
 *   176-191 sinks release frames (some or all)
 *   192-199 a sink answers a held display query
 *   200-215 guest writes its memory
 *   216-223 sinks change what they hold
 *   224-227 device reset
 *   228-235 new memory table
 *   236-255 other device calls */
static void
run_op(Input *in)
{
  guint8 sel = in_u8(in);

  if (sel < 144) {
    op_ctrl(in, sel);
  } else if (sel < 176) {
    op_cursor(in, sel);
  } else if (sel < 192) {
    guint n = sel & 1 ? st.n_holds : 1u + in_u8(in) % 3u;

    for (guint i = 0; i < n && st.n_holds > 0; i++)
      release_hold(sel & 2 ? st.n_holds - 1 : 0);
  } else if (sel < 200) {
    answer_query(in);
  } else if (sel < 216) {
    op_write_guest(in);
  } else if (sel < 224) {
    st.hold_mask = in_u32(in);
    st.hold_queries = sel & 1;
  } else if (sel < 228) {
    op_reset();
  } else if (sel < 236) {
    st.mem = tables[in_u8(in) % N_TABLES];
  } else {
    op_misc(in);
  }
  check_budget();
}

/* --- one input -------------------------------------------------------------- */

static const guint64 budgets[] = { 4u << 20, 1u << 20, 64u << 10, 16u << 20 };
static const guint32 modes[][2] = { { 1280, 800 }, { 16, 16 }, { 4095, 4095 }, { 640, 480 } };

static void
restore_memory(void)
{
  if (st.dirty_a.hi > st.dirty_a.lo)
    memcpy(region_a + st.dirty_a.lo, pristine_a + st.dirty_a.lo, st.dirty_a.hi - st.dirty_a.lo);
  if (st.dirty_b.hi > st.dirty_b.lo)
    memcpy(region_b + st.dirty_b.lo, pristine_b + st.dirty_b.lo, st.dirty_b.hi - st.dirty_b.lo);
}

static void
start(Input *in)
{
  guint8 h0 = in_u8(in), h1 = in_u8(in), h2 = in_u8(in), h3 = in_u8(in);

  memset(&st, 0, sizeof st);
  g_queue_init(&st.outstanding);
  st.dirty_a.lo = A_SIZE;
  st.dirty_b.lo = B_SIZE;
  st.config = (VgpuDeviceConfig){
    .num_scanouts = 1u + (h0 & 3u),
    .width = modes[h2 & 3][0],
    .height = modes[h2 & 3][1],
    .max_hostmem = budgets[h0 >> 4 & 3],
    .max_resources = h0 & 0x40 ? 4u : 0u,
  };
  st.hold_mask = h1 * 0x01010101u;
  st.hold_queries = (h2 >> 2) & 1;
  st.model_ok = TRUE;
  st.mem = tables[(h2 >> 3 & 7) % N_TABLES];
  st.dev = vgpu_device_new(&st.config, &fuzz_ops, NULL);
  st.features = h3 & 1 ? 0 : VGPU_DEVICE_FEATURES | VGPU_BLOB_FEATURES;
  vgpu_device_set_features(st.dev, st.features);
  switch (h0 >> 2 & 3) {
    case 0:
      st.sinks[0].iface = &guest_sink_iface;
      st.n_sinks = 1;
      break;
    case 1:
      st.sinks[0].iface = &image_sink_iface;
      st.n_sinks = 1;
      break;
    case 2:
      st.sinks[0].iface = &image_sink_iface;
      st.sinks[1].iface = &guest_sink_iface;
      st.n_sinks = 2;
      break;
    default:
      st.sinks[0].iface = &guest_sink_iface;
      st.sinks[1].iface = &sparse_sink_iface;
      st.n_sinks = 2;
      break;
  }
  for (guint i = 0; i < st.n_sinks; i++)
    vgpu_device_add_sink(st.dev, st.sinks[i].iface, &st.sinks[i]);
}

/* Ends the run: queries answered, frames released (before or after the
 * device goes), every element accounted for, the budget credited. */
static void
finish(gboolean free_first)
{
  answer_all_queries();
  if (!free_first) {
    release_all_holds();
    op_reset();
  }
  for (guint i = 0; i < st.n_sinks; i++)
    vgpu_device_remove_sink(st.dev, &st.sinks[i]);
  vgpu_device_free(st.dev);
  st.dev = NULL;
  release_all_holds();
  if (!g_queue_is_empty(&st.outstanding))
    fail("%u control requests neither completed nor discarded", st.outstanding.length);
  model_clear_all();
  restore_memory();
}

static void
log_handler(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  /* Guest errors are logged by design; anything else is a bug. */
  if ((level & G_LOG_LEVEL_WARNING) && g_str_has_prefix(message, "guest: ")) {
    if (verbose)
      fprintf(stderr, "[%s] %s\n", domain ? domain : "", message);
    return;
  }
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING))
    fail("unexpected log: %s: %s", domain ? domain : "", message);
  if (verbose)
    fprintf(stderr, "[%s] %s\n", domain ? domain : "", message);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  /* FUZZ_GPU_VERBOSE=1 shows the device's guest-error lines. */
  verbose = g_getenv("FUZZ_GPU_VERBOSE") != NULL;
  g_log_set_default_handler(log_handler, NULL);
  setup_memory();
  return 0;
}

int
LLVMFuzzerTestOneInput(const guint8 *data, size_t size)
{
  Input in = { data, size, 0 };
  gboolean free_first;

  if (size < 4)
    return 0;
  start(&in);
  free_first = data[0] & 0x80;
  for (guint n = 0; n < MAX_OPS && in.pos < in.n; n++)
    run_op(&in);
  finish(free_first);
  return 0;
}
