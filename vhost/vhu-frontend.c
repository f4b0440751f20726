/* vhu-frontend.c: the frontend (VMM) side of vhost-user.
 *
 * Plays QEMU's part towards a backend: guest memory in memfd regions, the
 * realize/start/stop message sequences of QEMU 10, and virtio-driver-side
 * split rings.  Everything is synchronous; each reply is awaited with poll()
 * and a deadline.  While waiting, the backend request channel (if any) is
 * serviced too, so a backend that asks us something cannot deadlock us. */
#include "vhu-frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vhu-msg.h"

#define MAX_QUEUES    (VHU_VRING_IDX_MASK + 1u)
#define MAX_RING_SIZE 32768u
#define BIT(n)        (G_GUINT64_CONSTANT(1) << (n))

typedef struct {
  guint64 gpa;
  gsize size;
  gsize mmap_offset;
  gsize map_size;
  int fd;
  guint8 *map; /* whole memfd mapping */
  guint8 *ptr; /* map + mmap_offset: the region's first byte */
  gsize next;  /* bump allocator position */
  gboolean sent;
} Region;

struct _VhuDriverQueue {
  VhuFrontend *fe;
  guint index;
  guint size;
  guint64 desc_gpa, avail_gpa, used_gpa;
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
  int kick_fd;
  gboolean event_idx;
  gboolean broken;
  /* Driver-private bookkeeping: never read back from shared memory. */
  guint16 free_head;
  guint num_free;
  guint16 *next;
  guint16 *chain_len;
  gboolean *in_use;
  gpointer *tokens;
  guint64 *ind_gpa; /* cached indirect table per head */
  guint *ind_cap;
  guint16 avail_idx; /* includes chains added but not yet published */
  guint16 num_added;
  guint16 last_used;
  guint64 scratch_gpa;
  gsize scratch_cap;
};

struct _VhuFrontend {
  int sock;
  guint timeout_ms;
  gboolean inited;
  gboolean started;
  guint64 features;          /* backend's offer */
  guint64 protocol_offer;    /* backend's protocol offer */
  guint64 protocol_features; /* negotiated */
  guint64 num_queues;        /* GET_QUEUE_NUM, 0 when unknown */
  guint64 max_mem_slots;
  guint64 driver_features;
  int backend_req_fd;
  GArray *call_fds; /* per queue, created on demand */
  GArray *err_fds;
  GPtrArray *regions; /* Region* */
  GPtrArray *queues;  /* VhuDriverQueue* */
  gboolean seal_memory;
};

static int transact_token;

/* --- small helpers ------------------------------------------------------- */

static gint64
deadline_after(guint timeout_ms)
{
  return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

static int
ms_left(gint64 deadline)
{
  gint64 left = deadline - g_get_monotonic_time();

  if (left <= 0)
    return 0;
  return (int)MIN((left + 999) / 1000, G_MAXINT);
}

static const char *
req_name(guint32 request)
{
  const char *name = vhu_request_name(request);

  return name != NULL ? name : "unknown request";
}

static void
close_fd(int *fd)
{
  if (*fd >= 0)
    close(*fd);
  *fd = -1;
}

/* --- backend request channel --------------------------------------------- */

/* Handles one message from the backend channel.  We implement none of the
 * backend requests beyond acknowledging CONFIG_CHANGE; anything asking for a
 * reply gets one so the backend is never left waiting. */
static void
service_backend_message(VhuFrontend *fe)
{
  g_autoptr(GError) error = NULL;
  VhuMsg msg;
  VhuMsgStatus st;

  st = vhu_msg_read(fe->backend_req_fd, &msg, (int)fe->timeout_ms, &error);
  if (st != VHU_MSG_OK) {
    if (st == VHU_MSG_ERROR)
      g_warning("backend request channel: %s; closing it", error->message);
    close_fd(&fe->backend_req_fd);
    return;
  }
  vhu_msg_close_fds(&msg);
  if (msg.hdr.flags & VHU_FLAG_NEED_REPLY) {
    guint64 ack = msg.hdr.request == VHU_BACKEND_CONFIG_CHANGE_MSG ? 0 : 1;

    if (!vhu_msg_write(fe->backend_req_fd, msg.hdr.request, VHU_REPLY_FLAGS, &ack, sizeof ack, NULL,
                       0, &error)) {
      g_warning("backend request channel: %s; closing it", error->message);
      close_fd(&fe->backend_req_fd);
    }
  }
}

/* Handles every message already waiting (a bounded number per call). */
static void
service_backend_channel(VhuFrontend *fe)
{
  for (guint i = 0; i < 64 && fe->backend_req_fd >= 0; i++) {
    struct pollfd pfd = { .fd = fe->backend_req_fd, .events = POLLIN };

    if (i > 0 && poll(&pfd, 1, 0) != 1)
      break;
    service_backend_message(fe);
  }
}

/* Waits until @fd is readable, servicing the backend channel meanwhile.
 * Returns FALSE when @deadline passes first. */
static gboolean
wait_readable(VhuFrontend *fe, int fd, gint64 deadline)
{
  for (;;) {
    struct pollfd pfd[2] = {
      { .fd = fd, .events = POLLIN },
      { .fd = fe->backend_req_fd, .events = POLLIN },
    };
    int n = fe->backend_req_fd >= 0 ? 2 : 1;
    int r = poll(pfd, n, ms_left(deadline));

    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return FALSE;
    if (n == 2 && pfd[1].revents != 0)
      service_backend_channel(fe);
    if (pfd[0].revents != 0)
      return TRUE;
  }
}

/* --- connection ---------------------------------------------------------- */

VhuFrontend *
vhu_frontend_new_from_fd(int fd)
{
  VhuFrontend *fe = g_new0(VhuFrontend, 1);

  fe->sock = fd;
  fe->timeout_ms = VHU_FRONTEND_DEFAULT_TIMEOUT_MS;
  fe->backend_req_fd = -1;
  fe->call_fds = g_array_new(FALSE, FALSE, sizeof(int));
  fe->err_fds = g_array_new(FALSE, FALSE, sizeof(int));
  fe->regions = g_ptr_array_new();
  fe->queues = g_ptr_array_new();
  return fe;
}

VhuFrontend *
vhu_frontend_connect(const char *path, GError **error)
{
  struct sockaddr_un sun = { .sun_family = AF_UNIX };
  gint64 deadline;
  int fd;

  if (strlen(path) >= sizeof sun.sun_path) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "socket path too long: %s", path);
    return NULL;
  }
  strcpy(sun.sun_path, path);
  /* Non-blocking: a listener whose backlog is full makes a blocking
   * connect() wait forever; here it is retried until the default timeout. */
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    int errsv = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "socket: %s", g_strerror(errsv));
    return NULL;
  }
  deadline = deadline_after(VHU_FRONTEND_DEFAULT_TIMEOUT_MS);
  while (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
    int errsv = errno;

    if (errsv == EINTR)
      continue;
    if (errsv == EAGAIN && ms_left(deadline) > 0) {
      g_usleep(1000);
      continue;
    }
    close(fd);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "cannot connect to %s: %s", path,
                g_strerror(errsv));
    return NULL;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return vhu_frontend_new_from_fd(fd);
}

VhuFrontend *
vhu_frontend_connect_wait(const char *path, guint timeout_ms, gboolean (*alive)(gpointer data),
                          gpointer data, GError **error)
{
  gint64 deadline = deadline_after(timeout_ms);

  for (;;) {
    g_autoptr(GError) local = NULL;
    VhuFrontend *fe = vhu_frontend_connect(path, &local);

    if (fe != NULL)
      return fe;
    /* Only "not there yet" is worth another try. */
    if ((!g_error_matches(local, G_IO_ERROR, G_IO_ERROR_NOT_FOUND)
         && !g_error_matches(local, G_IO_ERROR, G_IO_ERROR_CONNECTION_REFUSED))
        || g_get_monotonic_time() > deadline || (alive != NULL && !alive(data))) {
      g_propagate_error(error, g_steal_pointer(&local));
      return NULL;
    }
    g_usleep(2000);
  }
}

static void queue_free(VhuDriverQueue *q);

static void
region_free(Region *r)
{
  if (r->map != NULL)
    munmap(r->map, r->map_size);
  close_fd(&r->fd);
  g_free(r);
}

static void
close_fd_array(GArray *fds)
{
  for (guint i = 0; i < fds->len; i++)
    close_fd(&g_array_index(fds, int, i));
  g_array_free(fds, TRUE);
}

void
vhu_frontend_free(VhuFrontend *fe)
{
  if (fe == NULL)
    return;
  close_fd(&fe->sock);
  close_fd(&fe->backend_req_fd);
  for (guint i = 0; i < fe->queues->len; i++)
    queue_free(fe->queues->pdata[i]);
  g_ptr_array_free(fe->queues, TRUE);
  for (guint i = 0; i < fe->regions->len; i++)
    region_free(fe->regions->pdata[i]);
  g_ptr_array_free(fe->regions, TRUE);
  close_fd_array(fe->call_fds);
  close_fd_array(fe->err_fds);
  g_free(fe);
}

void
vhu_frontend_set_timeout(VhuFrontend *fe, guint timeout_ms)
{
  fe->timeout_ms = MAX(timeout_ms, 1u);
}

int
vhu_frontend_get_fd(VhuFrontend *fe)
{
  return fe->sock;
}

/* --- raw messages -------------------------------------------------------- */

gboolean
vhu_frontend_send(VhuFrontend *fe, guint32 request, guint32 flags, const void *payload, gsize size,
                  const int *fds, guint n_fds, GError **error)
{
  if (fe->sock < 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED, "not connected");
    return FALSE;
  }
  if (!vhu_msg_write(fe->sock, request, flags | VHU_VERSION, payload, size, fds, n_fds, error)) {
    g_prefix_error(error, "sending %s: ", req_name(request));
    return FALSE;
  }
  return TRUE;
}

gboolean
vhu_frontend_recv_reply(VhuFrontend *fe, guint32 request, void *payload, gsize *size, int *fds,
                        guint *n_fds, GError **error)
{
  VhuMsg msg;
  VhuMsgStatus st;
  guint want_fds = n_fds != NULL ? *n_fds : 0;

  if (n_fds != NULL)
    *n_fds = 0;
  if (fe->sock < 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED, "not connected");
    return FALSE;
  }
  if (!wait_readable(fe, fe->sock, deadline_after(fe->timeout_ms))) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                "no reply to %s from the backend within %u ms", req_name(request), fe->timeout_ms);
    return FALSE;
  }
  st = vhu_msg_read(fe->sock, &msg, (int)fe->timeout_ms, error);
  if (st == VHU_MSG_EOF) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                "backend closed the connection while %s was pending", req_name(request));
    return FALSE;
  }
  if (st != VHU_MSG_OK) {
    g_prefix_error(error, "reading the reply to %s: ", req_name(request));
    return FALSE;
  }
  if (msg.hdr.request != request) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "backend answered %s (%u) while %s was pending", req_name(msg.hdr.request),
                msg.hdr.request, req_name(request));
    vhu_msg_close_fds(&msg);
    return FALSE;
  }
  if (msg.hdr.flags != VHU_REPLY_FLAGS) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "reply to %s has flags 0x%x, expected 0x%x", req_name(request), msg.hdr.flags,
                VHU_REPLY_FLAGS);
    vhu_msg_close_fds(&msg);
    return FALSE;
  }
  if (size != NULL) {
    if (payload != NULL)
      memcpy(payload, msg.payload, MIN(*size, (gsize)msg.hdr.size));
    *size = msg.hdr.size;
  }
  for (guint i = 0; i < msg.n_fds && i < want_fds && fds != NULL; i++) {
    fds[i] = vhu_msg_steal_fd(&msg, i);
    (*n_fds)++;
  }
  vhu_msg_close_fds(&msg);
  return TRUE;
}

static gboolean
recv_u64(VhuFrontend *fe, guint32 request, guint64 *value, GError **error)
{
  gsize size = sizeof *value;

  if (!vhu_frontend_recv_reply(fe, request, value, &size, NULL, NULL, error))
    return FALSE;
  if (size != sizeof *value) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "reply to %s has %" G_GSIZE_FORMAT " bytes, expected 8", req_name(request), size);
    return FALSE;
  }
  return TRUE;
}

gboolean
vhu_frontend_get_u64(VhuFrontend *fe, guint32 request, guint64 *value, GError **error)
{
  if (!vhu_frontend_send(fe, request, 0, NULL, 0, NULL, 0, error))
    return FALSE;
  return recv_u64(fe, request, value, error);
}

gboolean
vhu_frontend_request(VhuFrontend *fe, guint32 request, const void *payload, gsize size,
                     const int *fds, guint n_fds, GError **error)
{
  gboolean ack = vhu_frontend_has_protocol_feature(fe, VHU_PF_REPLY_ACK);
  guint64 value;

  if (!vhu_frontend_send(fe, request, ack ? VHU_FLAG_NEED_REPLY : 0, payload, size, fds, n_fds,
                         error))
    return FALSE;
  if (!ack)
    return TRUE;
  if (!recv_u64(fe, request, &value, error))
    return FALSE;
  if (value != 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                "backend rejected %s (ack %" G_GUINT64_FORMAT ")", req_name(request), value);
    return FALSE;
  }
  return TRUE;
}

gboolean
vhu_frontend_set_u64(VhuFrontend *fe, guint32 request, guint64 value, GError **error)
{
  return vhu_frontend_request(fe, request, &value, sizeof value, NULL, 0, error);
}

/* A request the backend must have finished before we go on: acked with
 * REPLY_ACK, else followed by GET_FEATURES as a barrier (QEMU's trick). */
static gboolean
request_sync(VhuFrontend *fe, guint32 request, const void *payload, gsize size, GError **error)
{
  guint64 dummy;

  if (!vhu_frontend_request(fe, request, payload, size, NULL, 0, error))
    return FALSE;
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_REPLY_ACK))
    return TRUE;
  return vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &dummy, error);
}

static gboolean
set_vring_state(VhuFrontend *fe, guint32 request, guint index, guint num, GError **error)
{
  VhuVringState st = { .index = index, .num = num };

  return vhu_frontend_request(fe, request, &st, sizeof st, NULL, 0, error);
}

static gboolean
set_vring_fd(VhuFrontend *fe, guint32 request, guint index, int fd, GError **error)
{
  guint64 value = index & VHU_VRING_IDX_MASK;

  if (fd < 0)
    value |= VHU_VRING_NOFD;
  return vhu_frontend_request(fe, request, &value, sizeof value, fd >= 0 ? &fd : NULL,
                              fd >= 0 ? 1 : 0, error);
}

/* --- realize ------------------------------------------------------------- */

static int
new_eventfd(GError **error)
{
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);

  if (fd < 0) {
    int errsv = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "eventfd: %s", g_strerror(errsv));
  }
  return fd;
}

/* Makes sure call and error eventfds exist for queues [0, n). */
static gboolean
ensure_notify_fds(VhuFrontend *fe, guint n, GError **error)
{
  while (fe->call_fds->len < n) {
    int call = new_eventfd(error);
    int err;

    if (call < 0)
      return FALSE;
    err = new_eventfd(error);
    if (err < 0) {
      close(call);
      return FALSE;
    }
    g_array_append_val(fe->call_fds, call);
    g_array_append_val(fe->err_fds, err);
  }
  return TRUE;
}

static gboolean
open_backend_channel(VhuFrontend *fe, GError **error)
{
  int sv[2];
  gboolean ok;

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    int errsv = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "socketpair: %s",
                g_strerror(errsv));
    return FALSE;
  }
  ok = vhu_frontend_request(fe, VHU_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1, error);
  close(sv[1]);
  if (!ok) {
    close(sv[0]);
    return FALSE;
  }
  fe->backend_req_fd = sv[0];
  return TRUE;
}

static gboolean
negotiate_protocol(VhuFrontend *fe, guint64 protocol_mask, GError **error)
{
  guint64 neg;

  if (!vhu_frontend_get_u64(fe, VHU_GET_PROTOCOL_FEATURES, &fe->protocol_offer, error))
    return FALSE;
  neg = fe->protocol_offer & protocol_mask & VHU_FRONTEND_PROTOCOL_FEATURES;
  if (!vhu_frontend_send(fe, VHU_SET_PROTOCOL_FEATURES, 0, &neg, sizeof neg, NULL, 0, error))
    return FALSE;
  fe->protocol_features = neg;

  if (neg & BIT(VHU_PF_MQ)) {
    if (!vhu_frontend_get_u64(fe, VHU_GET_QUEUE_NUM, &fe->num_queues, error))
      return FALSE;
    if (fe->num_queues == 0 || fe->num_queues > MAX_QUEUES) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                  "backend reports %" G_GUINT64_FORMAT " queues (expected 1..%u)", fe->num_queues,
                  MAX_QUEUES);
      return FALSE;
    }
  }
  if (neg & BIT(VHU_PF_CONFIGURE_MEM_SLOTS)) {
    if (!vhu_frontend_get_u64(fe, VHU_GET_MAX_MEM_SLOTS, &fe->max_mem_slots, error))
      return FALSE;
    if (fe->max_mem_slots == 0) {
      g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                          "backend reports 0 memory slots");
      return FALSE;
    }
  }
  if ((neg & BIT(VHU_PF_BACKEND_REQ)) && !open_backend_channel(fe, error))
    return FALSE;
  return TRUE;
}

gboolean
vhu_frontend_init(VhuFrontend *fe, guint64 protocol_mask, GError **error)
{
  guint64 features;

  g_return_val_if_fail(!fe->inited, FALSE);
  if (!vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &fe->features, error))
    goto fail;
  if ((fe->features & BIT(VHU_F_PROTOCOL_FEATURES))
      && !negotiate_protocol(fe, protocol_mask, error))
    goto fail;
  if (!vhu_frontend_request(fe, VHU_SET_OWNER, NULL, 0, NULL, 0, error))
    goto fail;
  if (!vhu_frontend_get_u64(fe, VHU_GET_FEATURES, &features, error))
    goto fail;
  if (features != fe->features)
    g_message("backend changed its features from 0x%" G_GINT64_MODIFIER "x to 0x%" G_GINT64_MODIFIER
              "x after SET_OWNER",
              fe->features, features);
  fe->features = features;
  if (!ensure_notify_fds(fe, (guint)fe->num_queues, error))
    goto fail;
  for (guint i = 0; i < fe->num_queues; i++) {
    if (!set_vring_fd(fe, VHU_SET_VRING_CALL, i, g_array_index(fe->call_fds, int, i), error)
        || !set_vring_fd(fe, VHU_SET_VRING_ERR, i, g_array_index(fe->err_fds, int, i), error))
      goto fail;
  }
  fe->inited = TRUE;
  return TRUE;

fail:
  g_prefix_error(error, "vhost-user init: ");
  return FALSE;
}

guint64
vhu_frontend_get_backend_features(VhuFrontend *fe)
{
  return fe->features;
}

guint64
vhu_frontend_get_protocol_features(VhuFrontend *fe)
{
  return fe->protocol_features;
}

guint64
vhu_frontend_get_backend_protocol_features(VhuFrontend *fe)
{
  return fe->protocol_offer;
}

guint64
vhu_frontend_get_max_mem_slots(VhuFrontend *fe)
{
  return fe->max_mem_slots;
}

guint
vhu_frontend_get_num_queues(VhuFrontend *fe)
{
  return (guint)fe->num_queues;
}

gboolean
vhu_frontend_has_protocol_feature(VhuFrontend *fe, guint bit)
{
  return bit < 64 && (fe->protocol_features & BIT(bit)) != 0;
}

gboolean
vhu_frontend_get_config(VhuFrontend *fe, guint32 offset, void *buf, guint32 size, GError **error)
{
  VhuConfigMsg msg = { .offset = offset, .size = size, .flags = 0 };
  VhuConfigMsg reply;
  gsize reply_size = sizeof reply;

  if (size == 0 || size > VHU_MAX_CONFIG_SIZE) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT, "config size %u out of range 1..%u",
                size, VHU_MAX_CONFIG_SIZE);
    return FALSE;
  }
  if (!vhu_frontend_has_protocol_feature(fe, VHU_PF_CONFIG)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                        "the CONFIG protocol feature was not negotiated");
    return FALSE;
  }
  if (!vhu_frontend_send(fe, VHU_GET_CONFIG, 0, &msg, VHU_CONFIG_HDR_SIZE + size, NULL, 0, error)
      || !vhu_frontend_recv_reply(fe, VHU_GET_CONFIG, &reply, &reply_size, NULL, NULL, error))
    return FALSE;
  if (reply_size != VHU_CONFIG_HDR_SIZE + size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "GET_CONFIG of %u bytes answered with a %" G_GSIZE_FORMAT "-byte payload "
                "(backend refused or misbehaved)",
                size, reply_size);
    return FALSE;
  }
  memcpy(buf, reply.region, size);
  return TRUE;
}

gboolean
vhu_frontend_get_status(VhuFrontend *fe, guint8 *status, GError **error)
{
  guint64 value;

  if (!vhu_frontend_has_protocol_feature(fe, VHU_PF_STATUS)) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                        "the STATUS protocol feature was not negotiated");
    return FALSE;
  }
  if (!vhu_frontend_get_u64(fe, VHU_GET_STATUS, &value, error))
    return FALSE;
  if (value > 0xff) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "GET_STATUS answered 0x%" G_GINT64_MODIFIER "x, not a status byte", value);
    return FALSE;
  }
  *status = (guint8)value;
  return TRUE;
}

/* QEMU's vhost_user_add_status: read the status, set the missing bits. */
static gboolean
add_status(VhuFrontend *fe, guint8 bits, GError **error)
{
  guint8 status;

  if (!vhu_frontend_get_status(fe, &status, error))
    return FALSE;
  if ((status & bits) == bits)
    return TRUE;
  return vhu_frontend_set_u64(fe, VHU_SET_STATUS, status | bits, error);
}

/* --- guest memory -------------------------------------------------------- */

static void
region_desc(const Region *r, VhuMemRegionDesc *d)
{
  d->guest_phys_addr = r->gpa;
  d->memory_size = r->size;
  d->userspace_addr = (guint64)(guintptr)r->ptr;
  d->mmap_offset = r->mmap_offset;
}

/* Sends the regions the backend does not know yet: one ADD_MEM_REG each with
 * CONFIGURE_MEM_SLOTS, else the whole table with SET_MEM_TABLE. */
static gboolean
send_regions(VhuFrontend *fe, GError **error)
{
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_CONFIGURE_MEM_SLOTS)) {
    for (guint i = 0; i < fe->regions->len; i++) {
      Region *r = fe->regions->pdata[i];
      VhuMemSingleRegion m = { 0 };

      if (r->sent)
        continue;
      region_desc(r, &m.region);
      if (!vhu_frontend_request(fe, VHU_ADD_MEM_REG, &m, sizeof m, &r->fd, 1, error))
        return FALSE;
      r->sent = TRUE;
    }
    return TRUE;
  } else {
    VhuMemTableDesc t = { .nregions = fe->regions->len };
    int fds[VHU_MAX_TABLE_REGIONS];
    gboolean all_sent = TRUE;

    for (guint i = 0; i < fe->regions->len; i++)
      all_sent = all_sent && ((Region *)fe->regions->pdata[i])->sent;
    if (all_sent)
      return TRUE;
    if (fe->regions->len > VHU_MAX_TABLE_REGIONS) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                  "%u regions but SET_MEM_TABLE carries at most %u", fe->regions->len,
                  VHU_MAX_TABLE_REGIONS);
      return FALSE;
    }
    for (guint i = 0; i < fe->regions->len; i++) {
      Region *r = fe->regions->pdata[i];

      region_desc(r, &t.regions[i]);
      fds[i] = r->fd;
    }
    if (!vhu_frontend_request(fe, VHU_SET_MEM_TABLE, &t, 8 + sizeof t.regions[0] * t.nregions, fds,
                              t.nregions, error))
      return FALSE;
    for (guint i = 0; i < fe->regions->len; i++)
      ((Region *)fe->regions->pdata[i])->sent = TRUE;
    return TRUE;
  }
}

static gboolean
region_overlaps(VhuFrontend *fe, guint64 gpa, guint64 end)
{
  for (guint i = 0; i < fe->regions->len; i++) {
    Region *r = fe->regions->pdata[i];

    if (gpa < r->gpa + r->size && r->gpa < end)
      return TRUE;
  }
  return FALSE;
}

gboolean
vhu_frontend_add_region_offset(VhuFrontend *fe, guint64 gpa, gsize size, gsize mmap_offset,
                               GError **error)
{
  Region *r;
  guint64 end;
  gsize map_size;

  if (size == 0 || !g_uint64_checked_add(&end, gpa, size)
      || !g_size_checked_add(&map_size, size, mmap_offset) || map_size > G_MAXINT64) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "invalid region: gpa 0x%" G_GINT64_MODIFIER "x size %" G_GSIZE_FORMAT, gpa, size);
    return FALSE;
  }
  if (region_overlaps(fe, gpa, end)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                "region at 0x%" G_GINT64_MODIFIER "x overlaps another one", gpa);
    return FALSE;
  }
  r = g_new0(Region, 1);
  r->gpa = gpa;
  r->size = size;
  r->mmap_offset = mmap_offset;
  r->map_size = map_size;
  r->fd = memfd_create("vhu-guest-ram", MFD_CLOEXEC | (fe->seal_memory ? MFD_ALLOW_SEALING : 0));
  if (r->fd < 0 || ftruncate(r->fd, (off_t)map_size) < 0
      || (fe->seal_memory
          && fcntl(r->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)) {
    int errsv = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "guest memory: %s",
                g_strerror(errsv));
    region_free(r);
    return FALSE;
  }
  r->map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
  if (r->map == MAP_FAILED) {
    int errsv = errno;
    r->map = NULL;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errsv), "mmap guest memory: %s",
                g_strerror(errsv));
    region_free(r);
    return FALSE;
  }
  r->ptr = r->map + mmap_offset;
  g_ptr_array_add(fe->regions, r);
  if (fe->started && !send_regions(fe, error)) {
    g_ptr_array_remove(fe->regions, r);
    region_free(r);
    return FALSE;
  }
  return TRUE;
}

void
vhu_frontend_set_seal_memory(VhuFrontend *fe, gboolean seal)
{
  fe->seal_memory = seal;
}

gboolean
vhu_frontend_add_region(VhuFrontend *fe, guint64 gpa, gsize size, GError **error)
{
  return vhu_frontend_add_region_offset(fe, gpa, size, 0, error);
}

void *
vhu_frontend_gpa_to_ptr(VhuFrontend *fe, guint64 gpa, gsize len)
{
  for (guint i = 0; i < fe->regions->len; i++) {
    Region *r = fe->regions->pdata[i];

    if (gpa >= r->gpa && len <= r->size && gpa - r->gpa <= r->size - len)
      return r->ptr + (gpa - r->gpa);
  }
  return NULL;
}

int
vhu_frontend_get_region_fd(VhuFrontend *fe, guint64 gpa)
{
  for (guint i = 0; i < fe->regions->len; i++) {
    Region *r = fe->regions->pdata[i];

    if (gpa >= r->gpa && gpa - r->gpa < r->size)
      return r->fd;
  }
  return -1;
}

guint64
vhu_frontend_alloc(VhuFrontend *fe, gsize size, gsize align)
{
  if (align == 0)
    align = 1;
  g_return_val_if_fail((align & (align - 1)) == 0, G_MAXUINT64);
  for (guint i = 0; i < fe->regions->len; i++) {
    Region *r = fe->regions->pdata[i];
    /* Align the guest-physical address, not the offset. */
    guint64 pos = r->gpa + r->next;
    guint64 aligned;

    if (!g_uint64_checked_add(&aligned, pos, align - 1))
      continue;
    aligned &= ~(guint64)(align - 1);
    if (aligned - r->gpa > r->size || size > r->size - (aligned - r->gpa))
      continue;
    r->next = (aligned - r->gpa) + size;
    return aligned;
  }
  return G_MAXUINT64;
}

void
vhu_frontend_reset_alloc(VhuFrontend *fe)
{
  for (guint i = 0; i < fe->regions->len; i++)
    ((Region *)fe->regions->pdata[i])->next = 0;
}

/* --- driver queues: setup ------------------------------------------------ */

static void
queue_free(VhuDriverQueue *q)
{
  close_fd(&q->kick_fd);
  g_free(q->next);
  g_free(q->chain_len);
  g_free(q->in_use);
  g_free(q->tokens);
  g_free(q->ind_gpa);
  g_free(q->ind_cap);
  g_free(q);
}

static gsize
avail_bytes(guint size)
{
  return 4 + 2 * (gsize)size + 2; /* flags, idx, ring, used_event */
}

static gsize
used_bytes(guint size)
{
  return 4 + sizeof(struct vring_used_elem) * (gsize)size + 2; /* + avail_event */
}

/* Zeroes the rings and the driver state: a freshly initialised queue. */
static void
queue_reset(VhuDriverQueue *q)
{
  memset(q->desc, 0, sizeof(struct vring_desc) * q->size);
  memset(q->avail, 0, avail_bytes(q->size));
  memset(q->used, 0, used_bytes(q->size));
  for (guint i = 0; i < q->size; i++) {
    q->next[i] = (guint16)((i + 1) % q->size);
    q->in_use[i] = FALSE;
    q->tokens[i] = NULL;
    q->chain_len[i] = 0;
  }
  q->free_head = 0;
  q->num_free = q->size;
  q->avail_idx = 0;
  q->num_added = 0;
  q->last_used = 0;
  q->broken = FALSE;
}

static VhuDriverQueue *
queue_new(VhuFrontend *fe, guint index, guint size, GError **error)
{
  VhuDriverQueue *q = g_new0(VhuDriverQueue, 1);

  q->fe = fe;
  q->index = index;
  q->size = size;
  q->kick_fd = -1;
  q->desc_gpa = vhu_frontend_alloc(fe, sizeof(struct vring_desc) * size, 16);
  q->avail_gpa = vhu_frontend_alloc(fe, avail_bytes(size), 2);
  q->used_gpa = vhu_frontend_alloc(fe, used_bytes(size), 4);
  if (q->desc_gpa == G_MAXUINT64 || q->avail_gpa == G_MAXUINT64 || q->used_gpa == G_MAXUINT64) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE,
                "no guest memory left for queue %u (%u entries)", index, size);
    queue_free(q);
    return NULL;
  }
  q->desc = vhu_frontend_gpa_to_ptr(fe, q->desc_gpa, sizeof(struct vring_desc) * size);
  q->avail = vhu_frontend_gpa_to_ptr(fe, q->avail_gpa, avail_bytes(size));
  q->used = vhu_frontend_gpa_to_ptr(fe, q->used_gpa, used_bytes(size));
  q->kick_fd = new_eventfd(error);
  if (q->kick_fd < 0) {
    queue_free(q);
    return NULL;
  }
  q->next = g_new0(guint16, size);
  q->chain_len = g_new0(guint16, size);
  q->in_use = g_new0(gboolean, size);
  q->tokens = g_new0(gpointer, size);
  q->ind_gpa = g_new0(guint64, size);
  q->ind_cap = g_new0(guint, size);
  return q;
}

/* Reuses the queues of a previous start when their sizes match (as a guest
 * driver re-initialising its rings would), else allocates new rings. */
static gboolean
setup_queues(VhuFrontend *fe, const guint *sizes, guint n, GError **error)
{
  gboolean reuse = fe->queues->len == n;

  for (guint i = 0; reuse && i < n; i++)
    reuse = ((VhuDriverQueue *)fe->queues->pdata[i])->size == sizes[i];
  if (!reuse) {
    for (guint i = 0; i < fe->queues->len; i++)
      queue_free(fe->queues->pdata[i]);
    g_ptr_array_set_size(fe->queues, 0);
    for (guint i = 0; i < n; i++) {
      VhuDriverQueue *q = queue_new(fe, i, sizes[i], error);

      if (q == NULL)
        return FALSE;
      g_ptr_array_add(fe->queues, q);
    }
  }
  for (guint i = 0; i < n; i++) {
    VhuDriverQueue *q = fe->queues->pdata[i];

    q->event_idx = (fe->driver_features & BIT(VHU_F_RING_EVENT_IDX)) != 0;
    queue_reset(q);
  }
  return TRUE;
}

static gboolean
start_queue(VhuFrontend *fe, VhuDriverQueue *q, GError **error)
{
  VhuVringAddr addr = {
    .index = q->index,
    .flags = 0,
    .desc_user_addr = (guint64)(guintptr)q->desc,
    .used_user_addr = (guint64)(guintptr)q->used,
    .avail_user_addr = (guint64)(guintptr)q->avail,
    .log_guest_addr = 0,
  };
  VhuVringState enable = { .index = q->index, .num = 1 };

  if (!set_vring_state(fe, VHU_SET_VRING_NUM, q->index, q->size, error)
      || !set_vring_state(fe, VHU_SET_VRING_BASE, q->index, 0, error)
      || !vhu_frontend_request(fe, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0, error)
      || !set_vring_fd(fe, VHU_SET_VRING_KICK, q->index, q->kick_fd, error))
    return FALSE;
  if ((fe->driver_features & BIT(VHU_F_PROTOCOL_FEATURES))
      && !request_sync(fe, VHU_SET_VRING_ENABLE, &enable, sizeof enable, error))
    return FALSE;
  return set_vring_fd(fe, VHU_SET_VRING_CALL, q->index, g_array_index(fe->call_fds, int, q->index),
                      error);
}

static gboolean
check_start_args(VhuFrontend *fe, const guint *sizes, guint n, GError **error)
{
  if (!fe->inited || fe->started) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_FAILED,
                        fe->started ? "already started" : "not initialised");
    return FALSE;
  }
  if (n == 0 || n > MAX_QUEUES || (fe->num_queues != 0 && n > fe->num_queues)) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                "cannot start %u queues (backend has %" G_GUINT64_FORMAT ")", n, fe->num_queues);
    return FALSE;
  }
  for (guint i = 0; i < n; i++) {
    if (sizes[i] == 0 || sizes[i] > MAX_RING_SIZE || (sizes[i] & (sizes[i] - 1)) != 0) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                  "queue %u: size %u is not a power of two in 1..%u", i, sizes[i], MAX_RING_SIZE);
      return FALSE;
    }
  }
  if (fe->regions->len == 0) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "no guest memory: add a region first");
    return FALSE;
  }
  return TRUE;
}

gboolean
vhu_frontend_start(VhuFrontend *fe, guint64 driver_features, const guint *queue_sizes,
                   guint n_queues, GError **error)
{
  const guint64 always = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES);
  gboolean status = vhu_frontend_has_protocol_feature(fe, VHU_PF_STATUS);

  if (!check_start_args(fe, queue_sizes, n_queues, error))
    return FALSE;
  fe->driver_features = (driver_features | always) & fe->features;
  if (!vhu_frontend_set_u64(fe, VHU_SET_FEATURES, fe->driver_features, error)
      || (status && !add_status(fe, VHU_STATUS_FEATURES_OK, error)) || !send_regions(fe, error)
      || !ensure_notify_fds(fe, n_queues, error) || !setup_queues(fe, queue_sizes, n_queues, error))
    goto fail;
  for (guint i = 0; i < n_queues; i++) {
    if (!start_queue(fe, fe->queues->pdata[i], error))
      goto fail;
  }
  if (status
      && !add_status(fe, VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER | VHU_STATUS_DRIVER_OK, error))
    goto fail;
  fe->started = TRUE;
  return TRUE;

fail:
  g_prefix_error(error, "vhost-user start: ");
  return FALSE;
}

/* QEMU 10's vhost_dev_stop: disable every ring, then stop each one with
 * GET_VRING_BASE; with STATUS we also write status 0 as its reset hook does,
 * since our stop always means "driver gone" (a later start re-initialises the
 * rings from scratch). */
gboolean
vhu_frontend_stop(VhuFrontend *fe, GError **error)
{
  if (!fe->started)
    return TRUE;
  fe->started = FALSE;
  if (fe->driver_features & BIT(VHU_F_PROTOCOL_FEATURES)) {
    for (guint i = 0; i < fe->queues->len; i++) {
      VhuVringState st = { .index = i, .num = 0 };

      if (!request_sync(fe, VHU_SET_VRING_ENABLE, &st, sizeof st, error))
        goto fail;
    }
  }
  for (guint i = 0; i < fe->queues->len; i++) {
    VhuVringState st = { .index = i, .num = 0 };
    gsize size = sizeof st;

    if (!vhu_frontend_send(fe, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0, error)
        || !vhu_frontend_recv_reply(fe, VHU_GET_VRING_BASE, &st, &size, NULL, NULL, error))
      goto fail;
    if (size != sizeof st || st.index != i) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                  "GET_VRING_BASE(%u) answered with %" G_GSIZE_FORMAT " bytes for index %u", i,
                  size, st.index);
      goto fail;
    }
  }
  if (vhu_frontend_has_protocol_feature(fe, VHU_PF_STATUS)
      && !vhu_frontend_set_u64(fe, VHU_SET_STATUS, 0, error))
    goto fail;
  return TRUE;

fail:
  g_prefix_error(error, "vhost-user stop: ");
  return FALSE;
}

guint64
vhu_frontend_get_driver_features(VhuFrontend *fe)
{
  return fe->driver_features;
}

VhuDriverQueue *
vhu_frontend_get_queue(VhuFrontend *fe, guint idx)
{
  return idx < fe->queues->len ? fe->queues->pdata[idx] : NULL;
}

/* --- driver queues: the virtio driver's part ----------------------------- */

static guint16 *
used_event_ptr(VhuDriverQueue *q)
{
  return &q->avail->ring[q->size];
}

static guint16 *
avail_event_ptr(VhuDriverQueue *q)
{
  return (guint16 *)&q->used->ring[q->size];
}

static void
write_desc(struct vring_desc *d, const VhuGuestBuf *b, guint16 flags, guint16 next)
{
  d->addr = b->gpa;
  d->len = b->len;
  d->flags = flags;
  d->next = next;
}

/* Returns the gpa of an indirect table of at least @n entries for @head,
 * reusing the one that head had before when it is large enough. */
static guint64
indirect_table(VhuDriverQueue *q, guint16 head, guint n)
{
  if (q->ind_cap[head] < n) {
    guint cap = MAX(n, 8u);
    guint64 gpa = vhu_frontend_alloc(q->fe, sizeof(struct vring_desc) * cap, 16);

    if (gpa == G_MAXUINT64)
      return G_MAXUINT64;
    q->ind_gpa[head] = gpa;
    q->ind_cap[head] = cap;
  }
  return q->ind_gpa[head];
}

static void
fill_chain(struct vring_desc *table, const guint16 *links, guint16 first, const VhuGuestBuf *out,
           guint n_out, const VhuGuestBuf *in, guint n_in)
{
  guint n = n_out + n_in;
  guint16 i = first;

  for (guint k = 0; k < n; k++) {
    const VhuGuestBuf *b = k < n_out ? &out[k] : &in[k - n_out];
    guint16 flags = k < n_out ? 0 : VRING_DESC_F_WRITE;
    guint16 next = links != NULL ? links[i] : (guint16)(k + 1);

    if (k + 1 < n)
      flags |= VRING_DESC_F_NEXT;
    else
      next = 0;
    write_desc(&table[i], b, flags, next);
    i = links != NULL ? links[i] : (guint16)(k + 1);
  }
}

int
vhu_driver_queue_add(VhuDriverQueue *q, const VhuGuestBuf *out, guint n_out, const VhuGuestBuf *in,
                     guint n_in, gboolean indirect, gpointer token)
{
  guint n = n_out + n_in;
  guint16 head = q->free_head;

  if (n_out > MAX_RING_SIZE || n_in > MAX_RING_SIZE || n == 0 || q->num_free == 0 || q->broken)
    return -1;
  if (indirect) {
    guint64 table_gpa;
    struct vring_desc *table;
    VhuGuestBuf ind;

    if (n > MAX_RING_SIZE)
      return -1;
    table_gpa = indirect_table(q, head, n);
    if (table_gpa == G_MAXUINT64)
      return -1;
    table = vhu_frontend_gpa_to_ptr(q->fe, table_gpa, sizeof(struct vring_desc) * n);
    fill_chain(table, NULL, 0, out, n_out, in, n_in);
    ind.gpa = table_gpa;
    ind.len = (guint32)(sizeof(struct vring_desc) * n);
    write_desc(&q->desc[head], &ind, VRING_DESC_F_INDIRECT, 0);
    q->free_head = q->next[head];
    q->num_free--;
    q->chain_len[head] = 1;
  } else {
    if (n > q->num_free)
      return -1;
    fill_chain(q->desc, q->next, head, out, n_out, in, n_in);
    for (guint k = 0; k < n; k++)
      q->free_head = q->next[q->free_head];
    q->num_free -= n;
    q->chain_len[head] = (guint16)n;
  }
  q->in_use[head] = TRUE;
  q->tokens[head] = token;
  q->avail->ring[q->avail_idx % q->size] = head;
  q->avail_idx++;
  q->num_added++;
  return head;
}

void
vhu_driver_queue_kick(VhuDriverQueue *q)
{
  guint16 new_idx = q->avail_idx;
  guint16 old_idx = (guint16)(new_idx - q->num_added);
  gboolean notify;

  /* Descriptors and ring entries before the index (virtio_wmb). */
  __atomic_store_n(&q->avail->idx, new_idx, __ATOMIC_RELEASE);
  q->num_added = 0;
  /* The index store before reading the device's suppression state (virtio_mb). */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (q->event_idx)
    notify
        = vring_need_event(__atomic_load_n(avail_event_ptr(q), __ATOMIC_RELAXED), new_idx, old_idx);
  else
    notify = !(__atomic_load_n(&q->used->flags, __ATOMIC_RELAXED) & VRING_USED_F_NO_NOTIFY);
  if (notify) {
    guint64 one = 1;

    if (write(q->kick_fd, &one, sizeof one) < 0 && errno != EAGAIN)
      g_warning("queue %u: kick: %s", q->index, g_strerror(errno));
  }
}

static void
queue_mark_broken(VhuDriverQueue *q, const char *why)
{
  if (!q->broken)
    g_warning("queue %u: the device broke the used ring: %s", q->index, why);
  q->broken = TRUE;
}

static void
free_chain(VhuDriverQueue *q, guint16 head)
{
  guint16 last = head;

  for (guint k = 1; k < q->chain_len[head]; k++)
    last = q->next[last];
  q->next[last] = q->free_head;
  q->free_head = head;
  q->num_free += q->chain_len[head];
  q->chain_len[head] = 0;
  q->in_use[head] = FALSE;
  q->tokens[head] = NULL;
}

gboolean
vhu_driver_queue_get_used(VhuDriverQueue *q, gpointer *token, guint32 *len)
{
  guint16 used_idx;
  struct vring_used_elem elem;

  if (q->broken)
    return FALSE;
  used_idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
  if (used_idx == q->last_used)
    return FALSE;
  if ((guint16)(used_idx - q->last_used) > q->size - q->num_free) {
    queue_mark_broken(q, "used index moved past the requests in flight");
    return FALSE;
  }
  elem = q->used->ring[q->last_used % q->size];
  if (elem.id >= q->size || !q->in_use[elem.id]) {
    queue_mark_broken(q, "used entry names a descriptor that is not in flight");
    return FALSE;
  }
  if (token != NULL)
    *token = q->tokens[elem.id];
  if (len != NULL)
    *len = elem.len;
  free_chain(q, (guint16)elem.id);
  q->last_used++;
  if (q->event_idx)
    __atomic_store_n(used_event_ptr(q), q->last_used, __ATOMIC_RELAXED);
  return TRUE;
}

static gboolean
used_pending(VhuDriverQueue *q)
{
  /* Publish used_event before looking again (virtqueue_enable_cb). */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE) != q->last_used;
}

/* Consumes pending call notifications.  Used entries are always checked
 * before sleeping, so a notification eaten here is never lost. */
static void
drain_call(VhuDriverQueue *q, int call_fd)
{
  guint64 count;

  if (read(call_fd, &count, sizeof count) < 0 && errno != EAGAIN)
    g_warning("queue %u: call eventfd: %s", q->index, g_strerror(errno));
}

gboolean
vhu_driver_queue_wait(VhuDriverQueue *q, int timeout_ms)
{
  VhuFrontend *fe = q->fe;
  int call_fd = g_array_index(fe->call_fds, int, q->index);
  gint64 deadline = timeout_ms < 0 ? G_MAXINT64 : deadline_after((guint)timeout_ms);

  if (used_pending(q)) {
    drain_call(q, call_fd);
    return TRUE;
  }
  if (!wait_readable(fe, call_fd, deadline))
    return used_pending(q);
  drain_call(q, call_fd);
  return TRUE;
}

guint
vhu_driver_queue_num_free(VhuDriverQueue *q)
{
  return q->num_free;
}

void *
vhu_driver_queue_desc_table(VhuDriverQueue *q)
{
  return q->desc;
}

void *
vhu_driver_queue_avail(VhuDriverQueue *q)
{
  return q->avail;
}

void *
vhu_driver_queue_used(VhuDriverQueue *q)
{
  return q->used;
}

guint
vhu_driver_queue_size(VhuDriverQueue *q)
{
  return q->size;
}

/* Scratch guest memory for transact, kept per queue and grown on demand. */
static guint64
scratch(VhuDriverQueue *q, gsize need)
{
  if (q->scratch_cap < need) {
    gsize cap = MAX(need, (gsize)4096);
    guint64 gpa = vhu_frontend_alloc(q->fe, cap, 64);

    if (gpa == G_MAXUINT64)
      return G_MAXUINT64;
    q->scratch_gpa = gpa;
    q->scratch_cap = cap;
  }
  return q->scratch_gpa;
}

static gboolean
transact_wait(VhuDriverQueue *q, guint32 *len, GError **error)
{
  gint64 deadline = deadline_after(q->fe->timeout_ms);

  for (;;) {
    gpointer token;

    if (vhu_driver_queue_get_used(q, &token, len)) {
      if (token == &transact_token)
        return TRUE;
      continue;
    }
    if (q->broken) {
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                  "queue %u: the device wrote an invalid used entry", q->index);
      return FALSE;
    }
    if (ms_left(deadline) == 0 || !vhu_driver_queue_wait(q, ms_left(deadline))) {
      if (vhu_driver_queue_get_used(q, &token, len) && token == &transact_token)
        return TRUE;
      g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                  "queue %u: no answer from the device within %u ms", q->index, q->fe->timeout_ms);
      return FALSE;
    }
  }
}

gssize
vhu_driver_queue_transact(VhuDriverQueue *q, const void *req, gsize req_size, void *resp,
                          gsize resp_size, GError **error)
{
  gsize req_room = (req_size + 63) & ~(gsize)63;
  VhuGuestBuf out = { 0 }, in = { 0 };
  guint64 base;
  guint32 len = 0;

  if (req_size == 0 || req_size > G_MAXUINT32 / 2 || resp_size > G_MAXUINT32 / 2) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "request must be non-empty and below 2 GiB");
    return -1;
  }
  if (q->broken || q->num_free != q->size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY, "queue %u: %s", q->index,
                q->broken ? "broken by the device" : "requests still in flight");
    return -1;
  }
  base = scratch(q, req_room + resp_size);
  if (base == G_MAXUINT64) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "no guest memory left");
    return -1;
  }
  memcpy(vhu_frontend_gpa_to_ptr(q->fe, base, req_size), req, req_size);
  out = (VhuGuestBuf){ .gpa = base, .len = (guint32)req_size };
  in = (VhuGuestBuf){ .gpa = base + req_room, .len = (guint32)resp_size };
  if (resp_size > 0)
    memset(vhu_frontend_gpa_to_ptr(q->fe, in.gpa, resp_size), 0, resp_size);
  if (vhu_driver_queue_add(q, &out, 1, &in, resp_size > 0 ? 1 : 0, FALSE, &transact_token) < 0) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NO_SPACE, "queue %u: ring full", q->index);
    return -1;
  }
  vhu_driver_queue_kick(q);
  if (!transact_wait(q, &len, error))
    return -1;
  if (len > resp_size) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "queue %u: device claims %u bytes written into a %" G_GSIZE_FORMAT "-byte buffer",
                q->index, len, resp_size);
    return -1;
  }
  if (len > 0)
    memcpy(resp, vhu_frontend_gpa_to_ptr(q->fe, in.gpa, len), len);
  return len;
}
