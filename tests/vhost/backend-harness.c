/* backend-harness.c: see backend-harness.h. */
#include "backend-harness.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Small helpers */

void
dump_fds(void)
{
  GDir *dir = g_dir_open("/proc/self/fd", 0, NULL);
  const char *name;

  while ((name = g_dir_read_name(dir)) != NULL) {
    g_autofree char *path = g_build_filename("/proc/self/fd", name, NULL);
    g_autofree char *target = g_file_read_link(path, NULL);

    g_printerr("# fd %s -> %s\n", name, target != NULL ? target : "?");
  }
  g_dir_close(dir);
}

int
count_fds(void)
{
  GDir *dir = g_dir_open("/proc/self/fd", 0, NULL);
  int n = 0;

  g_assert_nonnull(dir);
  while (g_dir_read_name(dir) != NULL)
    n++;
  g_dir_close(dir);
  return n;
}

int
new_eventfd(void)
{
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

  g_assert_cmpint(fd, >=, 0);
  return fd;
}

/* Captured log lines of the "vhost" domain (any thread). */
static GMutex log_lock;
GPtrArray *log_lines;

static void
capture_log(const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{
  g_mutex_lock(&log_lock);
  g_ptr_array_add(log_lines, g_strdup(message));
  g_mutex_unlock(&log_lock);
  g_printerr("# [%s] %s\n", (level & G_LOG_LEVEL_WARNING) ? "warning" : "log", message);
}

guint
log_mark(void)
{
  guint n;

  g_mutex_lock(&log_lock);
  n = log_lines->len;
  g_mutex_unlock(&log_lock);
  return n;
}

/* Number of captured lines since @mark that contain @needle. */
guint
log_count_since(guint mark, const char *needle)
{
  guint n = 0;

  g_mutex_lock(&log_lock);
  for (guint i = mark; i < log_lines->len; i++)
    if (strstr(g_ptr_array_index(log_lines, i), needle) != NULL)
      n++;
  g_mutex_unlock(&log_lock);
  return n;
}

/* ------------------------------------------------------------------ */
/* /msg: message I/O */

void
socketpair_or_die(int sv[2])
{
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
}

/* Sends a header-only SET_OWNER with @n fresh eventfds attached (sendmsg
 * directly: vhu_msg_write refuses more than VHU_MAX_FDS) and closes our
 * copies. */
void
send_owner_with_fds(int sock, guint n)
{
  int fds[16];
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof fds)];
  } control;
  VhuMsgHeader h = { .request = VHU_SET_OWNER, .flags = VHU_VERSION, .size = 0 };
  struct iovec iov = { .iov_base = &h, .iov_len = sizeof h };
  struct msghdr mh = { .msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.buf,
                       .msg_controllen = CMSG_SPACE(n * sizeof(int)) };
  struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

  g_assert_cmpuint(n, <=, G_N_ELEMENTS(fds));
  for (guint i = 0; i < n; i++)
    fds[i] = new_eventfd();
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(n * sizeof(int));
  memcpy(CMSG_DATA(c), fds, n * sizeof(int));
  g_assert_cmpint(sendmsg(sock, &mh, MSG_NOSIGNAL), ==, sizeof h);
  for (guint i = 0; i < n; i++)
    close(fds[i]);
}

/* ------------------------------------------------------------------ */
/* Raw frontend: guest memory in one memfd exposed as two regions (like QEMU
 * around the VGA hole), split rings written by hand. */

const VhuMemRegionDesc raw_regions[2] = {
  { .guest_phys_addr = 0,
    .memory_size = 0xc0000,
    .userspace_addr = RAW_UVA_BASE,
    .mmap_offset = 0 },
  { .guest_phys_addr = 0x100000,
    .memory_size = 0x100000,
    .userspace_addr = RAW_UVA_BASE + 0x100000,
    .mmap_offset = 0x100000 },
};

int
connect_unix(const char *path)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

  g_assert_cmpint(fd, >=, 0);
  g_strlcpy(addr.sun_path, path, sizeof addr.sun_path);
  g_assert_cmpint(connect(fd, (struct sockaddr *)&addr, sizeof addr), ==, 0);
  return fd;
}

void
raw_layout_queue(Raw *r, guint i, guint num)
{
  RawQueue *q = &r->q[i];

  q->num = num;
  q->desc_gpa = (guint64)i * 0x8000;
  q->avail_gpa = q->desc_gpa + 0x1000;
  q->used_gpa = q->desc_gpa + 0x2000;
  q->buf_gpa = 0x100000 + (guint64)i * 0x10000;
  q->desc = (void *)(r->mem + q->desc_gpa);
  q->avail = (void *)(r->mem + q->avail_gpa);
  q->used = (void *)(r->mem + q->used_gpa);
}

Raw *
raw_new(void)
{
  Raw *r = g_new0(Raw, 1);

  r->sock = -1;
  r->memfd = memfd_create("raw-guest", MFD_CLOEXEC);
  g_assert_cmpint(r->memfd, >=, 0);
  g_assert_cmpint(ftruncate(r->memfd, RAW_MEM_SIZE), ==, 0);
  r->mem = mmap(NULL, RAW_MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, r->memfd, 0);
  g_assert_true(r->mem != MAP_FAILED);
  for (guint i = 0; i < RAW_MAX_Q; i++) {
    r->q[i].kick = r->q[i].call = r->q[i].err = -1;
    raw_layout_queue(r, i, RAW_QSIZE);
  }
  return r;
}

Raw *
raw_connect(const char *path)
{
  Raw *r = raw_new();

  r->sock = connect_unix(path);
  return r;
}

void
raw_close_queue_fds(Raw *r)
{
  for (guint i = 0; i < RAW_MAX_Q; i++) {
    int *fds[] = { &r->q[i].kick, &r->q[i].call, &r->q[i].err };

    for (guint j = 0; j < G_N_ELEMENTS(fds); j++) {
      if (*fds[j] >= 0)
        close(*fds[j]);
      *fds[j] = -1;
    }
  }
}

/* Drops the connection only; memory and ring state stay (reconnect). */
void
raw_disconnect(Raw *r)
{
  if (r->sock >= 0)
    close(r->sock);
  r->sock = -1;
  raw_close_queue_fds(r);
}

void
raw_free(Raw *r)
{
  raw_disconnect(r);
  munmap(r->mem, RAW_MEM_SIZE);
  close(r->memfd);
  g_free(r);
}

void
raw_send(Raw *r, guint32 req, guint32 flags, const void *payload, gsize size, const int *fds,
         guint n_fds)
{
  g_autoptr(GError) error = NULL;

  g_assert_true(
      vhu_msg_write(r->sock, req, flags | VHU_VERSION, payload, size, fds, n_fds, &error));
  g_assert_no_error(error);
}

/* Next message from the backend; asserts it is the reply to @req. Returns the
 * payload size; fds are closed unless @fd is given. */
gsize
raw_recv(Raw *r, guint32 req, void *payload, gsize size, int *fd)
{
  g_autoptr(GError) error = NULL;
  VhuMsg msg;

  g_assert_true(tu_wait_readable(r->sock, TIMEOUT_MS));
  g_assert_cmpint(vhu_msg_read(r->sock, &msg, TIMEOUT_MS, &error), ==, VHU_MSG_OK);
  g_assert_cmpuint(msg.hdr.request, ==, req);
  g_assert_cmphex(msg.hdr.flags, ==, VHU_REPLY_FLAGS);
  if (payload != NULL)
    memcpy(payload, msg.payload, MIN(size, msg.hdr.size));
  if (fd != NULL)
    *fd = vhu_msg_steal_fd(&msg, 0);
  vhu_msg_close_fds(&msg);
  return msg.hdr.size;
}

guint64
raw_get_u64(Raw *r, guint32 req)
{
  guint64 v = 0;

  raw_send(r, req, 0, NULL, 0, NULL, 0);
  g_assert_cmpuint(raw_recv(r, req, &v, sizeof v, NULL), ==, 8);
  return v;
}

guint64
raw_recv_ack(Raw *r, guint32 req)
{
  guint64 v = G_MAXUINT64;

  g_assert_cmpuint(raw_recv(r, req, &v, sizeof v, NULL), ==, 8);
  return v;
}

/* Sends with NEED_REPLY and returns the ack (REPLY_ACK must be on). */
guint64
raw_acked(Raw *r, guint32 req, const void *payload, gsize size, const int *fds, guint n_fds)
{
  raw_send(r, req, VHU_FLAG_NEED_REPLY, payload, size, fds, n_fds);
  return raw_recv_ack(r, req);
}

void
raw_u64_acked_ok(Raw *r, guint32 req, guint64 v)
{
  g_assert_cmpuint(raw_acked(r, req, &v, sizeof v, NULL, 0), ==, 0);
}

/* TRUE when the backend closed the connection within the timeout (any
 * pending replies are skipped). */
gboolean
raw_closed(Raw *r, int timeout_ms)
{
  guint8 buf[256];

  for (;;) {
    ssize_t n;

    if (!tu_wait_readable(r->sock, timeout_ms))
      return FALSE;
    n = recv(r->sock, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return TRUE;
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return TRUE;
  }
}

/* Realize-time handshake (as QEMU): features, protocol features & @mask. */
void
raw_init(Raw *r, guint64 mask)
{
  guint64 features = raw_get_u64(r, VHU_GET_FEATURES);
  guint64 protocol;

  g_assert_true(features & BIT(VHU_F_PROTOCOL_FEATURES));
  protocol = raw_get_u64(r, VHU_GET_PROTOCOL_FEATURES);
  r->protocol = protocol & mask;
  raw_send(r, VHU_SET_PROTOCOL_FEATURES, 0, &r->protocol, 8, NULL, 0);
  r->nq = (guint)raw_get_u64(r, VHU_GET_QUEUE_NUM);
  raw_send(r, VHU_SET_OWNER, 0, NULL, 0, NULL, 0);
}

gboolean
raw_ack_on(Raw *r)
{
  return (r->protocol & BIT(VHU_PF_REPLY_ACK)) != 0;
}

/* Sends @req with NEED_REPLY when REPLY_ACK is on (and checks ack 0). */
void
raw_request(Raw *r, guint32 req, const void *payload, gsize size, const int *fds, guint n_fds)
{
  if (raw_ack_on(r))
    g_assert_cmpuint(raw_acked(r, req, payload, size, fds, n_fds), ==, 0);
  else
    raw_send(r, req, 0, payload, size, fds, n_fds);
}

void
raw_set_mem_table(Raw *r)
{
  struct {
    guint32 nregions, padding;
    VhuMemRegionDesc regions[2];
  } __attribute__((packed)) table = { .nregions = 2 };
  int fds[2] = { r->memfd, r->memfd };

  memcpy(table.regions, raw_regions, sizeof raw_regions);
  raw_request(r, VHU_SET_MEM_TABLE, &table, sizeof table, fds, 2);
}

void
raw_add_mem_regs(Raw *r)
{
  for (guint i = 0; i < 2; i++) {
    VhuMemSingleRegion reg = { .region = raw_regions[i] };

    raw_request(r, VHU_ADD_MEM_REG, &reg, sizeof reg, &r->memfd, 1);
  }
}

guint64
raw_uva(guint64 gpa)
{
  return RAW_UVA_BASE + gpa; /* both regions keep gpa == uva offset */
}

void
raw_vring_fd(Raw *r, guint32 req, guint i, int fd)
{
  guint64 v = i | (fd < 0 ? VHU_VRING_NOFD : 0);

  raw_request(r, req, &v, sizeof v, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0);
}

/* Per-queue start as QEMU: NUM, BASE, ADDR, KICK, ENABLE, CALL. */
void
raw_start_queue(Raw *r, guint i, guint base, gboolean enable_need_reply)
{
  RawQueue *q = &r->q[i];
  VhuVringState num = { .index = i, .num = q->num };
  VhuVringState st = { .index = i, .num = base };
  VhuVringAddr addr = {
    .index = i,
    .desc_user_addr = raw_uva(q->desc_gpa),
    .avail_user_addr = raw_uva(q->avail_gpa),
    .used_user_addr = raw_uva(q->used_gpa),
  };
  VhuVringState en = { .index = i, .num = 1 };

  if (q->kick >= 0)
    close(q->kick);
  if (q->call >= 0)
    close(q->call);
  q->kick = new_eventfd();
  q->call = new_eventfd();
  raw_request(r, VHU_SET_VRING_NUM, &num, sizeof num, NULL, 0);
  raw_request(r, VHU_SET_VRING_BASE, &st, sizeof st, NULL, 0);
  raw_request(r, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0);
  raw_vring_fd(r, VHU_SET_VRING_KICK, i, q->kick);
  if (enable_need_reply)
    raw_request(r, VHU_SET_VRING_ENABLE, &en, sizeof en, NULL, 0);
  else
    raw_send(r, VHU_SET_VRING_ENABLE, 0, &en, sizeof en, NULL, 0);
  raw_vring_fd(r, VHU_SET_VRING_CALL, i, q->call);
}

void
raw_clear_rings(Raw *r)
{
  for (guint i = 0; i < RAW_MAX_Q; i++) {
    memset(r->mem + r->q[i].desc_gpa, 0, 0x3000);
    r->q[i].avail_idx = r->q[i].last_used = 0;
  }
}

/* QEMU 7.2: SET_MEM_TABLE, enable fire-and-forget. */
void
raw_start_72(Raw *r, guint nq)
{
  guint64 features = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES);
  guint8 status;

  raw_clear_rings(r);
  raw_send(r, VHU_SET_FEATURES, 0, &features, 8, NULL, 0);
  status = (guint8)raw_get_u64(r, VHU_GET_STATUS);
  if (!(status & VHU_STATUS_FEATURES_OK)) {
    guint64 s = status | VHU_STATUS_FEATURES_OK;
    raw_send(r, VHU_SET_STATUS, 0, &s, 8, NULL, 0);
  }
  raw_set_mem_table(r);
  for (guint i = 0; i < nq; i++)
    raw_start_queue(r, i, 0, FALSE);
}

/* QEMU 10: ADD_MEM_REG (unless the backend has the table already),
 * synchronous enable, DRIVER_OK. */
void
raw_start_10_full(Raw *r, guint nq, gboolean send_mem)
{
  guint64 features = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES);
  guint64 status = VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER | VHU_STATUS_FEATURES_OK;

  raw_clear_rings(r);
  raw_request(r, VHU_SET_FEATURES, &features, 8, NULL, 0);
  raw_request(r, VHU_SET_STATUS, &status, 8, NULL, 0);
  if (send_mem)
    raw_add_mem_regs(r);
  for (guint i = 0; i < nq; i++)
    raw_start_queue(r, i, 0, TRUE);
  status |= VHU_STATUS_DRIVER_OK;
  raw_request(r, VHU_SET_STATUS, &status, 8, NULL, 0);
}

void
raw_start_10(Raw *r, guint nq)
{
  raw_start_10_full(r, nq, TRUE);
}

/* Adds a two-descriptor chain (out then in) and kicks.  Returns the head. */
guint16
raw_submit(Raw *r, guint i, const void *out, guint32 out_len, guint32 in_len)
{
  RawQueue *q = &r->q[i];
  guint16 slot = (guint16)(q->avail_idx % (q->num / 2));
  guint16 head = (guint16)(2 * slot);
  guint64 out_gpa = q->buf_gpa + (guint64)head * RAW_SLOT_SIZE;
  guint64 in_gpa = out_gpa + RAW_SLOT_SIZE;
  guint64 one = 1;

  g_assert_cmpuint(out_len, <=, RAW_SLOT_SIZE);
  g_assert_cmpuint(in_len, <=, RAW_SLOT_SIZE);
  memcpy(r->mem + out_gpa, out, out_len);
  memset(r->mem + in_gpa, 0, RAW_SLOT_SIZE);
  q->desc[head] = (struct vring_desc){
    .addr = out_gpa, .len = out_len, .flags = VRING_DESC_F_NEXT, .next = (guint16)(head + 1)
  };
  q->desc[head + 1]
      = (struct vring_desc){ .addr = in_gpa, .len = in_len, .flags = VRING_DESC_F_WRITE };
  q->avail->ring[q->avail_idx % q->num] = head;
  q->avail_idx++;
  __atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
  if (q->kick >= 0)
    g_assert_cmpint(write(q->kick, &one, 8), ==, 8);
  return head;
}

const guint8 *
raw_in_buf(Raw *r, guint i, guint16 head)
{
  return r->mem + r->q[i].buf_gpa + (guint64)head * RAW_SLOT_SIZE + RAW_SLOT_SIZE;
}

/* Waits (on the call eventfd) until @n more used entries are there. */
gboolean
raw_wait_used(Raw *r, guint i, guint n, int timeout_ms)
{
  RawQueue *q = &r->q[i];
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

  for (;;) {
    guint16 used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
    gint64 left = (deadline - g_get_monotonic_time()) / 1000;
    guint64 v;

    if ((guint16)(used - q->last_used) >= n)
      return TRUE;
    if (left <= 0 || !tu_wait_readable(q->call, (int)left))
      return FALSE;
    (void)!read(q->call, &v, sizeof v);
  }
}

void
raw_get_used(Raw *r, guint i, guint32 *id, guint32 *len)
{
  RawQueue *q = &r->q[i];
  struct vring_used_elem *e = &q->used->ring[q->last_used % q->num];

  *id = e->id;
  *len = e->len;
  q->last_used++;
}

/* One echo round trip on queue @i. */
void
raw_echo(Raw *r, guint i, const char *text)
{
  guint32 len = (guint32)strlen(text) + 1, id, used_len;
  guint16 head = raw_submit(r, i, text, len, 64);

  g_assert_true(raw_wait_used(r, i, 1, TIMEOUT_MS));
  raw_get_used(r, i, &id, &used_len);
  g_assert_cmpuint(id, ==, head);
  g_assert_cmpuint(used_len, ==, len);
  g_assert_cmpstr((const char *)raw_in_buf(r, i, head), ==, text);
}

/* ------------------------------------------------------------------ */
/* In-process server: a VhuBackend with an echo device, its control context
 * iterated by a thread of its own. */

static void
echo_queue_kick(gpointer data, VhuBackend *backend, guint qidx)
{
  Server *s = data;
  VhuVring *vring = vhu_backend_get_vring(backend, qidx);
  VhuElem *elem;

  g_mutex_lock(&s->lock);
  s->kicks++;
  g_mutex_unlock(&s->lock);
  while ((elem = vhu_vring_pop(vring, NULL)) != NULL) {
    guint8 buf[RAW_SLOT_SIZE];
    gsize n = vhu_elem_read(elem, 0, buf, MIN(sizeof buf, elem->in_len));

    /* A request the device finds unusable (test hook). */
    if (n >= 6 && memcmp(buf, "RESET!", 6) == 0)
      vhu_backend_set_needs_reset(backend, "the test asked for it");
    vhu_elem_write(elem, 0, buf, n);
    vhu_vring_push(vring, elem, (guint32)n);
  }
  vhu_vring_notify(vring);
}

static void
echo_get_config(gpointer data, guint8 *config, gsize size)
{
  Server *s = data;

  memcpy(config, s->config, MIN(size, sizeof s->config));
}

static gboolean
echo_set_config(gpointer data, guint32 offset, const guint8 *bytes, gsize size, guint32 flags,
                GError **error)
{
  Server *s = data;

  if (offset == 0 && size >= 1 && bytes[0] == 0xee) {
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED, "read-only byte");
    return FALSE;
  }
  memcpy(s->config + offset, bytes, size);
  return TRUE;
}

static gboolean
echo_device_request(gpointer data, guint32 request, const guint8 *payload, gsize size, int *fds,
                    guint n_fds, GError **error)
{
  Server *s = data;

  if (request != VHU_GPU_SET_SOCKET || n_fds != 1) {
    g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, "request %u not for this device",
                request);
    return FALSE;
  }
  g_mutex_lock(&s->lock);
  if (s->device_fd >= 0)
    close(s->device_fd);
  s->device_fd = fds[0];
  fds[0] = -1;
  g_mutex_unlock(&s->lock);
  return TRUE;
}

static void
echo_reset(gpointer data)
{
  Server *s = data;

  g_mutex_lock(&s->lock);
  s->resets++;
  if (s->device_fd >= 0)
    close(s->device_fd);
  s->device_fd = -1;
  g_mutex_unlock(&s->lock);
}

static void
server_on_disconnect(gpointer data)
{
  Server *s = data;

  g_mutex_lock(&s->lock);
  s->disconnects++;
  g_cond_broadcast(&s->cond);
  g_mutex_unlock(&s->lock);
}

Server *
server_new_full(guint num_queues, const VhuBackendOptions *options, gboolean listen)
{
  g_autoptr(GError) error = NULL;
  Server *s = g_new0(Server, 1);
  VhuDeviceIface iface = {
    .name = "echo",
    .device_id = 0xfffe,
    .num_queues = num_queues,
    .max_queue_size = 256,
    .features = BIT(0),
    .config_size = sizeof s->config,
    .get_config = echo_get_config,
    .set_config = echo_set_config,
    .queue_kick = echo_queue_kick,
    .device_request = echo_device_request,
    .reset = echo_reset,
  };

  for (guint i = 0; i < sizeof s->config; i++)
    s->config[i] = (guint8)(0x10 + i);
  g_mutex_init(&s->lock);
  g_cond_init(&s->cond);
  s->device_fd = -1;
  s->ctx = g_main_context_new();
  s->loop = g_main_loop_new(s->ctx, FALSE);
  s->backend = vhu_backend_new(&iface, s, s->ctx, options);
  vhu_backend_set_disconnect_func(s->backend, server_on_disconnect, s);
  s->dir = tu_make_tmpdir("vhu-backend-XXXXXX");
  s->path = g_build_filename(s->dir, "sock", NULL);
  if (listen) {
    g_assert_true(vhu_backend_listen(s->backend, s->path, &error));
    g_assert_no_error(error);
  }
  return s;
}

/* Returns once both of the backend's threads run their loops, so fds they
 * open while starting up are counted as the baseline of fd-leak checks. */
void
server_run(Server *s)
{
  s->thread = tu_loop_thread_new("control", s->loop);
  context_barrier(s->ctx);
  context_barrier(vhu_backend_get_queue_context(s->backend));
}

Server *
server_new(guint num_queues)
{
  Server *s = server_new_full(num_queues, NULL, TRUE);

  server_run(s);
  return s;
}

void
server_free(Server *s)
{
  if (s->thread != NULL)
    tu_loop_thread_join(s->thread, s->loop);
  vhu_backend_free(s->backend);
  g_assert_false(g_file_test(s->path, G_FILE_TEST_EXISTS));
  if (s->device_fd >= 0)
    close(s->device_fd);
  g_main_loop_unref(s->loop);
  g_main_context_unref(s->ctx);
  g_rmdir(s->dir);
  g_free(s->dir);
  g_free(s->path);
  g_mutex_clear(&s->lock);
  g_cond_clear(&s->cond);
  g_free(s);
}

void
server_wait_disconnects(Server *s, guint n)
{
  gint64 deadline = g_get_monotonic_time() + TIMEOUT_MS * G_TIME_SPAN_MILLISECOND;

  g_mutex_lock(&s->lock);
  while (s->disconnects < n)
    if (!g_cond_wait_until(&s->cond, &s->lock, deadline))
      break;
  g_assert_cmpuint(s->disconnects, >=, n);
  g_mutex_unlock(&s->lock);
}

typedef struct {
  GMutex lock;
  GCond cond;
  gboolean done;
} Barrier;

static gboolean
barrier_signal(gpointer data)
{
  Barrier *b = data;

  g_mutex_lock(&b->lock);
  b->done = TRUE;
  g_cond_signal(&b->cond);
  g_mutex_unlock(&b->lock);
  return G_SOURCE_REMOVE;
}

/* Waits until @ctx dispatched everything queued before (deferred closes). */
void
context_barrier(GMainContext *ctx)
{
  Barrier b = { 0 };
  GSource *src = g_idle_source_new();
  gint64 deadline = g_get_monotonic_time() + TIMEOUT_MS * G_TIME_SPAN_MILLISECOND;

  g_mutex_init(&b.lock);
  g_cond_init(&b.cond);
  g_source_set_priority(src, G_PRIORITY_LOW);
  g_source_set_callback(src, barrier_signal, &b, NULL);
  g_source_attach(src, ctx);
  g_source_unref(src);
  g_mutex_lock(&b.lock);
  while (!b.done)
    if (!g_cond_wait_until(&b.cond, &b.lock, deadline))
      break;
  g_assert_true(b.done);
  g_mutex_unlock(&b.lock);
  g_mutex_clear(&b.lock);
  g_cond_clear(&b.cond);
}

/* After the frontend left: the backend processed it, every fd it held for the
 * session is closed, and a fresh frontend is served fully. */
void
server_check_recovered(Server *s, guint disconnects, int fds_before)
{
  Raw *r;

  server_wait_disconnects(s, disconnects);
  /* The disconnect is reported while the message that caused it is still
   * being handled: its fds are closed when that dispatch returns. */
  context_barrier(s->ctx);
  context_barrier(vhu_backend_get_queue_context(s->backend));
  if (count_fds() != fds_before)
    dump_fds();
  g_assert_cmpint(count_fds(), ==, fds_before);
  g_assert_cmpuint(vhu_backend_get_status(s->backend), ==, 0);

  r = raw_connect(s->path);
  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "fresh frontend, queue 0");
  raw_echo(r, 1, "fresh frontend, queue 1");
  raw_free(r);
  server_wait_disconnects(s, disconnects + 1);
}

void
harness_init(void)
{
  log_lines = g_ptr_array_new_with_free_func(g_free);
  g_log_set_handler("vhost", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL, capture_log, NULL);
  /* The backend's warnings about hostile input are expected and checked
   * through the capture; criticals stay fatal. */
  g_log_set_always_fatal(G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL);
  signal(SIGPIPE, SIG_IGN);
}
