/* gst-vhost-vtest: serves Mesa's virgl vtest protocol (GALLIUM_DRIVER=virpipe)
 * and turns each request into virtio-gpu 3D commands, sent over vhost-user
 * through the project's frontend driver to a GPU backend (gst-vhost-gpu
 * --virgl), so that unmodified GL programs render through it.
 *
 * The bridge plays the VMM: guest memory is its own memfd regions, one
 * virgl context per client.  Resources the client maps (vtest protocol 2
 * and 3) get a memfd of their own for the client and a backing in guest
 * memory for the backend; transfers copy between the two.  Clients are
 * served one at a time, each from scratch.  What a client sends is checked
 * before it becomes a command; a client that breaks the protocol, or whose
 * command the backend refuses, is dropped with one log line. */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <linux/virtio_gpu.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "vhu-frontend.h"

#define EXIT_USAGE 2
#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))

/* vtest protocol (Mesa's virgl vtest winsys, virglrenderer's vtest server) */
#define VTEST_DEFAULT_SOCKET       "/tmp/.virgl_test"
#define VTEST_PROTOCOL_VERSION     3
#define VCMD_GET_CAPS              1
#define VCMD_RESOURCE_CREATE       2
#define VCMD_RESOURCE_UNREF        3
#define VCMD_TRANSFER_GET          4
#define VCMD_TRANSFER_PUT          5
#define VCMD_SUBMIT_CMD            6
#define VCMD_RESOURCE_BUSY_WAIT    7
#define VCMD_CREATE_RENDERER       8
#define VCMD_GET_CAPS2             9
#define VCMD_PING_PROTOCOL_VERSION 10
#define VCMD_PROTOCOL_VERSION      11
#define VCMD_RESOURCE_CREATE2      12
#define VCMD_TRANSFER_GET2         13
#define VCMD_TRANSFER_PUT2         14
#define VCMD_GET_PARAM             15
#define VCMD_GET_CAPSET            16
#define VCMD_CONTEXT_INIT          17
#define VCMD_RES_CREATE_SIZE       10
#define VCMD_RES_CREATE2_SIZE      11
#define VCMD_TRANSFER2_SIZE        10
#define VCMD_BUSY_WAIT_SIZE        2

/* struct virgl_caps_v2 (virgl_hw.h): what the bridge hides.  A client's
 * mapping is not the renderer's backing here (a memfd of its own, copied on
 * TRANSFER_PUT2/GET2), so nothing may rely on the renderer reading or
 * writing it directly: transfers inside the command stream, copy transfers
 * through staging buffers, persistent (buffer storage) mappings. */
#define CAPS2_CAPABILITY_BITS                      392u
#define CAPS2_CAPABILITY_BITS_V2                   688u
#define VIRGL_CAP_TRANSFER                         (1u << 17) /* TRANSFER3D inside the stream */
#define VIRGL_CAP_COPY_TRANSFER                    (1u << 26)
#define VIRGL_CAP_ARB_BUFFER_STORAGE               (1u << 31)
#define VIRGL_CAP_V2_COPY_TRANSFER_BOTH_DIRECTIONS (1u << 7)

/* Bounds on what a client may ask for. */
#define MAX_NAME        4096u
#define MAX_SUBMIT      (4u << 20) /* the backend's SUBMIT_3D limit */
#define MAX_RESOURCES   16384u
#define READ_TIMEOUT_MS 10000

#define RING_GPA  0x100000ull
#define RING_SIZE (16u << 20)
#define HEAP_GPA  0x100000000ull
#define PAGE      4096u

typedef struct {
  char *socket_path;
  char *backend;
  guint64 guest_memory;
  gint verbosity;
} Options;

static Options opts = { .guest_memory = G_GUINT64_CONSTANT(1) << 30 };

/* ------------------------------------------------------------------------ */
/* Guest memory for backings: first fit over free ranges (offsets). */

typedef struct {
  guint64 off, size;
} Range;

typedef struct {
  GArray *free; /* Range, sorted by offset, never adjacent */
  guint64 size;
} Heap;

static void
heap_init(Heap *h, guint64 size)
{
  Range all = { 0, size };

  h->free = g_array_new(FALSE, FALSE, sizeof(Range));
  h->size = size;
  g_array_append_val(h->free, all);
}

/* Page-rounded; G_MAXUINT64 when full. */
static guint64
heap_alloc(Heap *h, guint64 size)
{
  size = (size + PAGE - 1) & ~(guint64)(PAGE - 1);
  for (guint i = 0; i < h->free->len; i++) {
    Range *r = &g_array_index(h->free, Range, i);

    if (r->size >= size) {
      guint64 off = r->off;

      r->off += size;
      r->size -= size;
      if (r->size == 0)
        g_array_remove_index(h->free, i);
      return off;
    }
  }
  return G_MAXUINT64;
}

static void
heap_free(Heap *h, guint64 off, guint64 size)
{
  Range n = { off, (size + PAGE - 1) & ~(guint64)(PAGE - 1) };
  guint i = 0;

  while (i < h->free->len && g_array_index(h->free, Range, i).off < off)
    i++;
  g_array_insert_val(h->free, i, n);
  /* merge with the next, then with the previous */
  if (i + 1 < h->free->len) {
    Range *a = &g_array_index(h->free, Range, i), *b = a + 1;

    if (a->off + a->size == b->off) {
      a->size += b->size;
      g_array_remove_index(h->free, i + 1);
    }
  }
  if (i > 0) {
    Range *a = &g_array_index(h->free, Range, i - 1), *b = a + 1;

    if (a->off + a->size == b->off) {
      a->size += b->size;
      g_array_remove_index(h->free, i);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* The backend */

typedef struct {
  VhuFrontend *fe;
  Heap heap;
  guint8 *heap_ptr;
  guint32 next_ctx;
  guint32 next_res;
} Bridge;

/* One control request, answered; the answer type (or 0 when the backend is
 * gone: then the bridge ends). */
static guint32
gpu(Bridge *b, const void *req, gsize len, void *resp, gsize resp_size, gsize *got)
{
  g_autoptr(GError) error = NULL;
  struct virtio_gpu_ctrl_hdr hdr = { 0 };
  gssize n;

  if (!resp) {
    resp = &hdr;
    resp_size = sizeof hdr;
  }
  n = vhu_driver_queue_transact(vhu_frontend_get_queue(b->fe, 0), req, len, resp, resp_size,
                                &error);
  if (n < (gssize)sizeof hdr) {
    g_printerr("%s: the GPU backend does not answer: %s\n", g_get_prgname(),
               error ? error->message : "short answer");
    exit(EXIT_FAILURE);
  }
  if (got)
    *got = (gsize)n;
  return ((struct virtio_gpu_ctrl_hdr *)resp)->type;
}

#define HDR(t, ctx) ((struct virtio_gpu_ctrl_hdr){ .type = (t), .ctx_id = (ctx) })

/* ------------------------------------------------------------------------ */
/* Clients */

typedef struct {
  guint32 id;  /* the virtio resource id, which the client's stream names */
  guint64 off; /* backing in the heap */
  gsize size;  /* of the backing and the client's mapping; 0: none */
  guint8 *shm; /* our mapping of the client's memfd */
} Res;

typedef struct {
  Bridge *b;
  int fd;
  guint protocol;
  guint32 ctx_id;
  guint32 capset;
  gboolean ctx_created;
  char *name;
  GHashTable *res; /* id -> Res */
} Client;

G_GNUC_PRINTF(2, 3)
static gboolean
client_fail(Client *c, const char *fmt, ...)
{
  g_autofree char *msg = NULL;
  va_list args;

  va_start(args, fmt);
  msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_warning("client %s: %s; dropped", c->name ? c->name : "?", msg);
  return FALSE;
}

static gboolean
client_read(Client *c, void *buf, gsize len)
{
  guint8 *p = buf;

  while (len > 0) {
    struct pollfd pfd = { c->fd, POLLIN, 0 };
    ssize_t n;

    if (poll(&pfd, 1, READ_TIMEOUT_MS) <= 0)
      return FALSE;
    n = recv(c->fd, p, len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    p += n;
    len -= (gsize)n;
  }
  return TRUE;
}

static gboolean
client_write(Client *c, const void *buf, gsize len)
{
  const guint8 *p = buf;

  while (len > 0) {
    ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    p += n;
    len -= (gsize)n;
  }
  return TRUE;
}

static gboolean
reply(Client *c, guint32 cmd, const guint32 *data, guint32 n_dw)
{
  guint32 hdr[2] = { n_dw, cmd };

  return client_write(c, hdr, sizeof hdr) && (n_dw == 0 || client_write(c, data, n_dw * 4u));
}

static gboolean
send_fd(Client *c, int fd)
{
  char byte = 0;
  struct iovec iov = { &byte, 1 };
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr msg
      = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);

  memset(u.buf, 0, sizeof u.buf);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
  return sendmsg(c->fd, &msg, MSG_NOSIGNAL) == 1;
}

static guint8 *
heap_ptr(Bridge *b, guint64 off)
{
  return b->heap_ptr + off;
}

static void
res_destroy(Client *c, Res *r)
{
  struct virtio_gpu_resource_unref u = { HDR(VIRTIO_GPU_CMD_RESOURCE_UNREF, 0), r->id, 0 };

  gpu(c->b, &u, sizeof u, NULL, 0, NULL);
  if (r->size) {
    heap_free(&c->b->heap, r->off, r->size);
    munmap(r->shm, r->size);
  }
  g_free(r);
}

/* The virgl context, made at the first command that needs it. */
static gboolean
ensure_context(Client *c)
{
  struct virtio_gpu_ctx_create cc = { HDR(VIRTIO_GPU_CMD_CTX_CREATE, 0) };
  guint32 type;

  if (c->ctx_created)
    return TRUE;
  c->ctx_id = ++c->b->next_ctx;
  cc.hdr.ctx_id = c->ctx_id;
  cc.nlen = (guint32)MIN(strlen(c->name), sizeof cc.debug_name);
  cc.context_init = c->capset;
  memcpy(cc.debug_name, c->name, cc.nlen);
  type = gpu(c->b, &cc, sizeof cc, NULL, 0, NULL);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return client_fail(c, "CTX_CREATE answered 0x%x", type);
  c->ctx_created = TRUE;
  return TRUE;
}

static gboolean
cmd_caps(Client *c, guint32 capset, guint32 cmd)
{
  struct virtio_gpu_get_capset_info ci = { HDR(VIRTIO_GPU_CMD_GET_CAPSET_INFO, 0), capset - 1, 0 };
  struct virtio_gpu_resp_capset_info info = { 0 };
  struct virtio_gpu_get_capset gc = { HDR(VIRTIO_GPU_CMD_GET_CAPSET, 0), capset, 0 };
  g_autofree guint8 *resp = NULL;
  gsize got = 0, size;
  guint32 hdr[2];

  if (gpu(c->b, &ci, sizeof ci, &info, sizeof info, NULL) != VIRTIO_GPU_RESP_OK_CAPSET_INFO
      || info.capset_id != capset || info.capset_max_size == 0
      || info.capset_max_size > 64u * 1024u)
    return client_fail(c, "capset %u unavailable", capset);
  gc.capset_version = info.capset_max_version;
  size = sizeof(struct virtio_gpu_ctrl_hdr) + info.capset_max_size;
  resp = g_malloc0(size);
  if (gpu(c->b, &gc, sizeof gc, resp, size, &got) != VIRTIO_GPU_RESP_OK_CAPSET || got != size)
    return client_fail(c, "GET_CAPSET %u failed", capset);
  if (capset == VIRTIO_GPU_CAPSET_VIRGL2 && info.capset_max_size >= CAPS2_CAPABILITY_BITS_V2 + 4) {
    guint8 *caps = resp + sizeof(struct virtio_gpu_ctrl_hdr);
    guint32 bits, bits2;

    memcpy(&bits, caps + CAPS2_CAPABILITY_BITS, 4);
    memcpy(&bits2, caps + CAPS2_CAPABILITY_BITS_V2, 4);
    bits &= ~(VIRGL_CAP_TRANSFER | VIRGL_CAP_COPY_TRANSFER | VIRGL_CAP_ARB_BUFFER_STORAGE);
    bits2 &= ~VIRGL_CAP_V2_COPY_TRANSFER_BOTH_DIRECTIONS;
    memcpy(caps + CAPS2_CAPABILITY_BITS, &bits, 4);
    memcpy(caps + CAPS2_CAPABILITY_BITS_V2, &bits2, 4);
  }
  if (cmd == VCMD_GET_CAPSET) {
    guint32 valid = 1;

    hdr[0] = 1 + info.capset_max_size / 4;
    hdr[1] = VCMD_GET_CAPSET;
    return client_write(c, hdr, sizeof hdr) && client_write(c, &valid, 4)
           && client_write(c, resp + 24, info.capset_max_size);
  }
  /* GET_CAPS / GET_CAPS2: the length field counts bytes plus one, as
   * virglrenderer's server sends it, the id names the capset. */
  hdr[0] = info.capset_max_size + 1;
  hdr[1] = capset;
  return client_write(c, hdr, sizeof hdr) && client_write(c, resp + 24, info.capset_max_size);
}

static gboolean
cmd_get_capset(Client *c)
{
  guint32 a[2];

  if (!client_read(c, a, sizeof a))
    return FALSE;
  if (a[0] != VIRTIO_GPU_CAPSET_VIRGL && a[0] != VIRTIO_GPU_CAPSET_VIRGL2) {
    guint32 invalid = 0;

    return reply(c, VCMD_GET_CAPSET, &invalid, 1);
  }
  return cmd_caps(c, a[0], VCMD_GET_CAPSET);
}

static gboolean
cmd_resource_create(Client *c, guint32 cmd)
{
  guint32 a[VCMD_RES_CREATE2_SIZE] = { 0 };
  guint n = cmd == VCMD_RESOURCE_CREATE2 ? VCMD_RES_CREATE2_SIZE : VCMD_RES_CREATE_SIZE;
  struct virtio_gpu_resource_create_3d rc = { HDR(VIRTIO_GPU_CMD_RESOURCE_CREATE_3D, 0) };
  guint64 data_size;
  Res *r;
  guint32 type;

  if (!client_read(c, a, n * 4u))
    return FALSE;
  if (!ensure_context(c))
    return FALSE;
  data_size = cmd == VCMD_RESOURCE_CREATE2 ? a[10] : 0;
  if (g_hash_table_size(c->res) >= MAX_RESOURCES)
    return client_fail(c, "more than %u resources", MAX_RESOURCES);
  if (c->protocol >= 3) {
    if (a[0] != 0)
      return client_fail(c, "resource handle %u with protocol 3", a[0]);
    do
      rc.resource_id = ++c->b->next_res;
    while (rc.resource_id == 0 || g_hash_table_contains(c->res, GUINT_TO_POINTER(rc.resource_id)));
  } else {
    if (a[0] == 0 || g_hash_table_contains(c->res, GUINT_TO_POINTER(a[0])))
      return client_fail(c, "resource handle %u invalid or in use", a[0]);
    rc.resource_id = a[0];
  }
  rc.target = a[1];
  rc.format = a[2];
  rc.bind = a[3];
  rc.width = a[4];
  rc.height = a[5];
  rc.depth = a[6];
  rc.array_size = a[7];
  rc.last_level = a[8];
  rc.nr_samples = a[9];
  type = gpu(c->b, &rc, sizeof rc, NULL, 0, NULL);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return client_fail(c, "RESOURCE_CREATE_3D %ux%ux%u target %u format %u answered 0x%x", rc.width,
                       rc.height, rc.depth, rc.target, rc.format, type);
  r = g_new0(Res, 1);
  r->id = rc.resource_id;
  g_hash_table_insert(c->res, GUINT_TO_POINTER(r->id), r);
  {
    struct virtio_gpu_ctx_resource ca
        = { HDR(VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, c->ctx_id), r->id, 0 };

    if (gpu(c->b, &ca, sizeof ca, NULL, 0, NULL) != VIRTIO_GPU_RESP_OK_NODATA)
      return client_fail(c, "CTX_ATTACH_RESOURCE %u refused", r->id);
  }
  if (c->protocol >= 3 && !reply(c, cmd, &r->id, 1))
    return FALSE;
  if (data_size) {
    struct {
      struct virtio_gpu_resource_attach_backing a;
      struct virtio_gpu_mem_entry e;
    } ab = { { HDR(VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, 0), r->id, 1 }, { 0 } };
    int fd;
    gboolean ok;

    r->off = heap_alloc(&c->b->heap, data_size);
    if (r->off == G_MAXUINT64)
      return client_fail(c, "no guest memory left for %" G_GUINT64_FORMAT " bytes", data_size);
    r->size = data_size;
    fd = memfd_create("vtest-resource", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)data_size) < 0) {
      if (fd >= 0)
        close(fd);
      heap_free(&c->b->heap, r->off, r->size);
      r->size = 0;
      return client_fail(c, "memfd of %" G_GUINT64_FORMAT " bytes: %s", data_size,
                         g_strerror(errno));
    }
    r->shm = mmap(NULL, data_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->shm == MAP_FAILED) {
      close(fd);
      heap_free(&c->b->heap, r->off, r->size);
      r->size = 0;
      return client_fail(c, "mmap: %s", g_strerror(errno));
    }
    ok = send_fd(c, fd);
    close(fd);
    if (!ok)
      return FALSE;
    ab.e.addr = HEAP_GPA + r->off;
    ab.e.length = (guint32)data_size;
    memset(heap_ptr(c->b, r->off), 0, data_size);
    type = gpu(c->b, &ab, sizeof ab, NULL, 0, NULL);
    if (type != VIRTIO_GPU_RESP_OK_NODATA)
      return client_fail(c, "ATTACH_BACKING of %" G_GUINT64_FORMAT " bytes answered 0x%x",
                         data_size, type);
  }
  return TRUE;
}

static gboolean
cmd_resource_unref(Client *c)
{
  guint32 id;
  Res *r;

  if (!client_read(c, &id, 4))
    return FALSE;
  r = g_hash_table_lookup(c->res, GUINT_TO_POINTER(id));
  if (!r)
    return TRUE; /* as the server: nothing to do */
  g_hash_table_steal(c->res, GUINT_TO_POINTER(id));
  res_destroy(c, r);
  return TRUE;
}

static gboolean
cmd_submit(Client *c, guint32 len_dw)
{
  g_autofree guint8 *req = NULL;
  struct virtio_gpu_cmd_submit s = { HDR(VIRTIO_GPU_CMD_SUBMIT_3D, 0) };
  gsize bytes = (gsize)len_dw * 4u;
  guint32 type;

  if (bytes > MAX_SUBMIT)
    return client_fail(c, "command buffer of %zu bytes (at most %u)", bytes, MAX_SUBMIT);
  req = g_malloc(sizeof s + bytes);
  if (!client_read(c, req + sizeof s, bytes) || !ensure_context(c))
    return FALSE;
  s.hdr.ctx_id = c->ctx_id;
  s.size = (guint32)bytes;
  memcpy(req, &s, sizeof s);
  type = gpu(c->b, req, sizeof s + bytes, NULL, 0, NULL);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return client_fail(c, "SUBMIT_3D of %zu bytes answered 0x%x", bytes, type);
  return TRUE;
}

/* TRANSFER_GET2 / PUT2: the data is in the client's mapping at offset. */
static gboolean
cmd_transfer2(Client *c, gboolean put)
{
  guint32 a[VCMD_TRANSFER2_SIZE];
  struct virtio_gpu_transfer_host_3d t = { 0 };
  Res *r;
  guint32 type;

  if (!client_read(c, a, sizeof a) || !ensure_context(c))
    return FALSE;
  r = g_hash_table_lookup(c->res, GUINT_TO_POINTER(a[0]));
  if (!r || r->size == 0)
    return client_fail(c, "transfer on resource %u without a mapping", a[0]);
  if (a[9] >= r->size)
    return client_fail(c, "transfer offset %u beyond %zu bytes", a[9], r->size);
  t.hdr = HDR(put ? VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D : VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
              c->ctx_id);
  t.resource_id = r->id;
  t.level = a[1];
  t.box = (struct virtio_gpu_box){ a[2], a[3], a[4], a[5], a[6], a[7] };
  t.offset = a[9];
  g_debug("transfer %s res %u level %u box %ux%ux%u+%u+%u+%u offset %u size %zu",
          put ? "put" : "get", r->id, a[1], a[5], a[6], a[7], a[2], a[3], a[4], a[9], r->size);
  /* The rows' layout is the renderer's: copy from the offset on. */
  if (put)
    memcpy(heap_ptr(c->b, r->off) + t.offset, r->shm + t.offset, r->size - t.offset);
  type = gpu(c->b, &t, sizeof t, NULL, 0, NULL);
  if (type != VIRTIO_GPU_RESP_OK_NODATA)
    return client_fail(c, "%s on resource %u answered 0x%x",
                       put ? "TRANSFER_TO_HOST_3D" : "TRANSFER_FROM_HOST_3D", r->id, type);
  if (!put)
    memcpy(r->shm + t.offset, heap_ptr(c->b, r->off) + t.offset, r->size - t.offset);
  return TRUE;
}

/* Everything submitted so far is done once a fenced empty submit is
 * answered. */
static gboolean
cmd_busy_wait(Client *c)
{
  guint32 a[VCMD_BUSY_WAIT_SIZE], busy = 0;

  if (!client_read(c, a, sizeof a))
    return FALSE;
  if (c->ctx_created) {
    struct virtio_gpu_cmd_submit s = { HDR(VIRTIO_GPU_CMD_SUBMIT_3D, c->ctx_id), 0, 0 };
    guint32 type;

    s.hdr.flags = VIRTIO_GPU_FLAG_FENCE;
    type = gpu(c->b, &s, sizeof s, NULL, 0, NULL);
    if (type != VIRTIO_GPU_RESP_OK_NODATA)
      return client_fail(c, "fence answered 0x%x", type);
  }
  return reply(c, VCMD_RESOURCE_BUSY_WAIT, &busy, 1);
}

static gboolean
cmd_protocol_version(Client *c)
{
  guint32 v;

  if (!client_read(c, &v, 4))
    return FALSE;
  c->protocol = MIN(v, (guint32)VTEST_PROTOCOL_VERSION);
  if (c->protocol < 2)
    c->protocol = 0; /* as the server: 1 is deprecated */
  return reply(c, VCMD_PROTOCOL_VERSION, &c->protocol, 1);
}

static gboolean
cmd_context_init(Client *c)
{
  guint32 capset;

  if (!client_read(c, &capset, 4))
    return FALSE;
  if (capset != VIRTIO_GPU_CAPSET_VIRGL && capset != VIRTIO_GPU_CAPSET_VIRGL2)
    return client_fail(c, "CONTEXT_INIT with capset %u", capset);
  if (c->ctx_created)
    return capset == c->capset || client_fail(c, "CONTEXT_INIT after the context exists");
  c->capset = capset;
  return ensure_context(c);
}

static gboolean
skip(Client *c, gsize bytes)
{
  guint8 buf[256];

  while (bytes > 0) {
    gsize n = MIN(bytes, sizeof buf);

    if (!client_read(c, buf, n))
      return FALSE;
    bytes -= n;
  }
  return TRUE;
}

/* One request; FALSE ends the client. */
static gboolean
client_dispatch(Client *c)
{
  guint32 hdr[2];

  if (!client_read(c, hdr, sizeof hdr))
    return FALSE;
  if (!c->name) {
    if (hdr[1] != VCMD_CREATE_RENDERER || hdr[0] > MAX_NAME)
      return client_fail(c, "first request %u is not CREATE_RENDERER", hdr[1]);
    c->name = g_malloc0(hdr[0] + 1);
    if (!client_read(c, c->name, hdr[0]))
      return FALSE;
    g_info("client %s connected", c->name);
    return TRUE;
  }
  g_debug("request %u, %u dwords", hdr[1], hdr[0]);
  switch (hdr[1]) {
    case VCMD_PING_PROTOCOL_VERSION:
      return reply(c, VCMD_PING_PROTOCOL_VERSION, NULL, 0);
    case VCMD_PROTOCOL_VERSION:
      return hdr[0] == 1 ? cmd_protocol_version(c) : client_fail(c, "bad PROTOCOL_VERSION");
    case VCMD_GET_CAPS:
      return skip(c, (gsize)hdr[0] * 4u) && cmd_caps(c, VIRTIO_GPU_CAPSET_VIRGL, hdr[1]);
    case VCMD_GET_CAPS2:
      return skip(c, (gsize)hdr[0] * 4u) && cmd_caps(c, VIRTIO_GPU_CAPSET_VIRGL2, hdr[1]);
    case VCMD_GET_CAPSET:
      return hdr[0] == 2 ? cmd_get_capset(c) : client_fail(c, "bad GET_CAPSET");
    case VCMD_GET_PARAM: {
      guint32 p, none[2] = { 0, 0 };

      return hdr[0] == 1 && client_read(c, &p, 4) && reply(c, VCMD_GET_PARAM, none, 2);
    }
    case VCMD_CONTEXT_INIT:
      return hdr[0] == 1 ? cmd_context_init(c) : client_fail(c, "bad CONTEXT_INIT");
    case VCMD_RESOURCE_CREATE:
    case VCMD_RESOURCE_CREATE2:
      if (hdr[0] != (hdr[1] == VCMD_RESOURCE_CREATE ? VCMD_RES_CREATE_SIZE : VCMD_RES_CREATE2_SIZE))
        return client_fail(c, "bad RESOURCE_CREATE length %u", hdr[0]);
      return cmd_resource_create(c, hdr[1]);
    case VCMD_RESOURCE_UNREF:
      return hdr[0] == 1 ? cmd_resource_unref(c) : client_fail(c, "bad RESOURCE_UNREF");
    case VCMD_SUBMIT_CMD:
      return cmd_submit(c, hdr[0]);
    case VCMD_TRANSFER_GET2:
    case VCMD_TRANSFER_PUT2:
      /* Mesa puts header and data size in the length, though the data
       * stays in the mapping; the server reads the header only. */
      if (hdr[0] < VCMD_TRANSFER2_SIZE)
        return client_fail(c, "bad transfer length %u", hdr[0]);
      return cmd_transfer2(c, hdr[1] == VCMD_TRANSFER_PUT2);
    case VCMD_RESOURCE_BUSY_WAIT:
      return hdr[0] == VCMD_BUSY_WAIT_SIZE ? cmd_busy_wait(c) : client_fail(c, "bad BUSY_WAIT");
    default:
      /* TRANSFER_GET/PUT (protocol 0), blobs and syncs (venus) */
      return client_fail(c, "unsupported request %u", hdr[1]);
  }
}

/* Serves one client to its end, then drops everything it made. */
static void
client_serve(Bridge *b, int fd)
{
  Client c = { .b = b, .fd = fd };
  GHashTableIter it;
  gpointer r;

  c.res = g_hash_table_new(NULL, NULL);
  while (client_dispatch(&c))
    ;
  g_hash_table_iter_init(&it, c.res);
  while (g_hash_table_iter_next(&it, NULL, &r))
    res_destroy(&c, r);
  g_hash_table_unref(c.res);
  if (c.ctx_created) {
    struct virtio_gpu_ctx_destroy d = { HDR(VIRTIO_GPU_CMD_CTX_DESTROY, c.ctx_id) };

    gpu(b, &d, sizeof d, NULL, 0, NULL);
  }
  g_info("client %s gone", c.name ? c.name : "?");
  g_free(c.name);
  close(fd);
}

/* ------------------------------------------------------------------------ */

static gboolean
bridge_connect(Bridge *b, GError **error)
{
  const guint sizes[2] = { 256, 16 };
  guint64 drv = BIT(VIRTIO_GPU_F_VIRGL) | BIT(VHU_F_RING_INDIRECT_DESC) | BIT(VHU_F_RING_EVENT_IDX);

  b->fe = vhu_frontend_connect_wait(opts.backend, 5000, NULL, NULL, error);
  if (!b->fe || !vhu_frontend_init(b->fe, G_MAXUINT64, error))
    return FALSE;
  if (!(vhu_frontend_get_backend_features(b->fe) & BIT(VIRTIO_GPU_F_VIRGL))) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                "%s offers no 3D (start gst-vhost-gpu with --virgl)", opts.backend);
    return FALSE;
  }
  if (!vhu_frontend_add_region(b->fe, RING_GPA, RING_SIZE, error)
      || !vhu_frontend_add_region(b->fe, HEAP_GPA, opts.guest_memory, error))
    return FALSE;
  /* The bump allocator (rings, request scratch) keeps to the first region. */
  if (vhu_frontend_alloc(b->fe, opts.guest_memory, PAGE) != HEAP_GPA) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED, "guest memory layout");
    return FALSE;
  }
  b->heap_ptr = vhu_frontend_gpa_to_ptr(b->fe, HEAP_GPA, opts.guest_memory);
  heap_init(&b->heap, opts.guest_memory);
  vhu_frontend_set_timeout(b->fe, 30000);
  return vhu_frontend_start(b->fe, drv, sizes, 2, error);
}

static int
listen_on(const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd;

  if (strlen(path) >= sizeof addr.sun_path) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FILENAME_TOO_LONG, "%s: path too long", path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  unlink(path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 16) < 0) {
    int e = errno;

    if (fd >= 0)
      close(fd);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e), "%s: %s", path, g_strerror(e));
    return -1;
  }
  return fd;
}

static volatile sig_atomic_t stop_requested;

static void
on_stop(int sig)
{
  stop_requested = 1;
}

static gboolean
parse_verbose(const char *name, const char *value, gpointer data, GError **error)
{
  opts.verbosity++;
  return TRUE;
}

static gboolean
parse_memory(const char *name, const char *value, gpointer data, GError **error)
{
  char *end = NULL;
  guint64 n = g_ascii_strtoull(value, &end, 10), mult = 1;

  if (end && (*end == 'M' || *end == 'm'))
    mult = 1u << 20, end++;
  else if (end && (*end == 'G' || *end == 'g'))
    mult = 1u << 30, end++;
  if (end == value || *end || !g_uint64_checked_mul(&opts.guest_memory, n, mult)
      || opts.guest_memory < (16u << 20) || opts.guest_memory > (G_GUINT64_CONSTANT(64) << 30)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s: 16M..64G with an M or G suffix, not %s", name, value);
    return FALSE;
  }
  opts.guest_memory &= ~(guint64)(PAGE - 1);
  return TRUE;
}

static const GOptionEntry entries[] = {
  { "socket-path", 's', 0, G_OPTION_ARG_FILENAME, &opts.socket_path,
    "Serve vtest clients on PATH (default " VTEST_DEFAULT_SOCKET ", where Mesa's virpipe "
    "connects)",
    "PATH" },
  { "backend", 'b', 0, G_OPTION_ARG_FILENAME, &opts.backend,
    "The vhost-user socket of the GPU backend (gst-vhost-gpu --virgl)", "PATH" },
  { "guest-memory", 0, 0, G_OPTION_ARG_CALLBACK, parse_memory,
    "Guest memory for resource backings (default 1G; pages are used as needed)", "SIZE" },
  { "verbose", 'v', G_OPTION_FLAG_NO_ARG, G_OPTION_ARG_CALLBACK, parse_verbose,
    "Log clients coming and going", NULL },
  { NULL },
};

int
main(int argc, char **argv)
{
  g_autoptr(GOptionContext) ctx = NULL;
  g_autoptr(GError) error = NULL;
  Bridge b = { 0 };
  const char *path;
  struct sigaction sa = { .sa_handler = on_stop };
  int lfd;

  signal(SIGPIPE, SIG_IGN);
  g_set_prgname("gst-vhost-vtest");
  ctx = g_option_context_new("- Mesa vtest clients rendered by a vhost-user GPU backend");
  g_option_context_add_main_entries(ctx, entries, NULL);
  g_option_context_set_description(
      ctx, "Example:\n"
           "  gst-vhost-gpu --virgl --socket-path /tmp/gpu.sock &\n"
           "  gst-vhost-vtest --backend /tmp/gpu.sock &\n"
           "  GALLIUM_DRIVER=virpipe LIBGL_ALWAYS_SOFTWARE=1 glmark2-es2\n");
  if (!g_option_context_parse(ctx, &argc, &argv, &error)) {
    g_printerr("%s: %s\n", g_get_prgname(), error->message);
    return EXIT_USAGE;
  }
  if (!opts.backend || argc > 1) {
    g_printerr("%s: --backend PATH is required\n", g_get_prgname());
    return EXIT_USAGE;
  }
  g_log_writer_default_set_use_stderr(TRUE);
  if (opts.verbosity > 0)
    g_setenv("G_MESSAGES_DEBUG", "all", TRUE);
  path = opts.socket_path ? opts.socket_path : VTEST_DEFAULT_SOCKET;
  if (!bridge_connect(&b, &error)) {
    g_printerr("%s: %s: %s\n", g_get_prgname(), opts.backend, error->message);
    return EXIT_FAILURE;
  }
  lfd = listen_on(path, &error);
  if (lfd < 0) {
    g_printerr("%s: %s\n", g_get_prgname(), error->message);
    return EXIT_FAILURE;
  }
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  g_message("serving vtest clients on %s", path);
  while (!stop_requested) {
    struct pollfd pfd = { lfd, POLLIN, 0 };
    int cfd;

    if (poll(&pfd, 1, 200) <= 0)
      continue;
    cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd >= 0)
      client_serve(&b, cfd);
  }
  close(lfd);
  unlink(path);
  vhu_frontend_free(b.fe);
  g_array_unref(b.heap.free);
  g_free(opts.socket_path);
  g_free(opts.backend);
  return EXIT_SUCCESS;
}
