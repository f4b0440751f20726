/* test-backend: the backend side of vhost-user.
 *
 * - /msg/...: message I/O over socketpairs.
 * - /backend/...: a VhuBackend in this process (control context on its own
 *   thread, listening on a real socket), driven by a raw frontend written
 *   here, so that replies, acks, hostile messages and fd leaks (counted in
 *   /proc/self/fd) can be checked exactly.
 * - /null/...: the vhu-null-backend program as a separate process
 *   (VHU_NULL_BACKEND), driven by the VhuFrontend library or the raw frontend:
 *   QEMU 7.2 and 10 start sequences, backlog, --once/--fd, broken rings,
 *   inflight recovery across kill -9. */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <linux/virtio_ring.h>
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

#include "backend-harness.h"

#define TIMEOUT_MS 5000
#define BIT(n)     (G_GUINT64_CONSTANT(1) << (n))
static void
test_msg_roundtrip(void)
{
  g_autoptr(GError) error = NULL;
  int sv[2], efd[3];
  guint64 value = 0x1122334455667788;
  VhuMsg msg;

  socketpair_or_die(sv);
  for (guint i = 0; i < 3; i++)
    efd[i] = new_eventfd();
  g_assert_true(vhu_msg_write(sv[0], VHU_SET_MEM_TABLE, 0x9, &value, sizeof value, efd, 3, &error));
  g_assert_no_error(error);
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_OK);
  g_assert_cmpuint(msg.hdr.request, ==, VHU_SET_MEM_TABLE);
  g_assert_cmpuint(msg.hdr.flags, ==, 0x9);
  g_assert_cmpuint(msg.hdr.size, ==, 8);
  g_assert_cmpmem(msg.payload, 8, &value, 8);
  g_assert_cmpuint(msg.n_fds, ==, 3);
  /* The received fds are live eventfds. */
  {
    guint64 one = 1, got = 0;
    int fd = vhu_msg_steal_fd(&msg, 1);

    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(efd[1], &one, 8), ==, 8);
    g_assert_cmpint(read(fd, &got, 8), ==, 8);
    g_assert_cmpuint(got, ==, 1);
    g_assert_cmpint(vhu_msg_steal_fd(&msg, 1), ==, -1);
    g_assert_cmpint(vhu_msg_steal_fd(&msg, 7), ==, -1);
    close(fd);
  }
  vhu_msg_close_fds(&msg);

  /* Header-only message, then EOF at a boundary. */
  g_assert_true(vhu_msg_write(sv[0], VHU_GET_FEATURES, 1, NULL, 0, NULL, 0, &error));
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_OK);
  g_assert_cmpuint(msg.hdr.size, ==, 0);
  g_assert_cmpuint(msg.n_fds, ==, 0);
  close(sv[0]);
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_EOF);
  g_assert_no_error(error);
  close(sv[1]);
  for (guint i = 0; i < 3; i++)
    close(efd[i]);
}

static void
test_msg_hostile(void)
{
  g_autoptr(GError) error = NULL;
  VhuMsgHeader hdr = { .request = 1, .flags = 1, .size = 8 };
  int sv[2], fds[VHU_MAX_FDS + 1];
  int before = count_fds();
  VhuMsg msg;
  gint64 t0;

  /* Half a payload, then silence: error after the timeout, not a hang. */
  socketpair_or_die(sv);
  g_assert_cmpint(write(sv[0], &hdr, sizeof hdr), ==, sizeof hdr);
  g_assert_cmpint(write(sv[0], "abcd", 4), ==, 4);
  t0 = g_get_monotonic_time();
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 200, &error), ==, VHU_MSG_ERROR);
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT);
  g_assert_cmpint(g_get_monotonic_time() - t0, <, 2 * G_USEC_PER_SEC);
  g_clear_error(&error);
  close(sv[0]);
  close(sv[1]);

  /* Closed in the middle of the header. */
  socketpair_or_die(sv);
  g_assert_cmpint(write(sv[0], &hdr, 5), ==, 5);
  close(sv[0]);
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_ERROR);
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT);
  g_clear_error(&error);
  close(sv[1]);

  /* Oversized payload. */
  socketpair_or_die(sv);
  hdr.size = VHU_MAX_PAYLOAD + 1;
  g_assert_cmpint(write(sv[0], &hdr, sizeof hdr), ==, sizeof hdr);
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_ERROR);
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA);
  g_clear_error(&error);
  close(sv[0]);
  close(sv[1]);

  /* Twelve fds: all closed on the receiving side. */
  socketpair_or_die(sv);
  send_owner_with_fds(sv[0], 12);
  g_assert_cmpint(vhu_msg_read(sv[1], &msg, 1000, &error), ==, VHU_MSG_ERROR);
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA);
  g_clear_error(&error);
  close(sv[0]);
  close(sv[1]);

  /* Writing more than VHU_MAX_FDS is refused. */
  for (guint i = 0; i < G_N_ELEMENTS(fds); i++)
    fds[i] = -1;
  g_assert_false(vhu_msg_write(0, 1, 1, NULL, 0, fds, VHU_MAX_FDS + 1, &error));
  g_clear_error(&error);

  g_assert_cmpint(count_fds(), ==, before);
}

static void
test_msg_closed_peer(void)
{
  g_autoptr(GError) error = NULL;
  int sv[2];

  /* No SIGPIPE: a closed peer is an error. */
  socketpair_or_die(sv);
  close(sv[1]);
  g_assert_false(vhu_msg_write(sv[0], 1, 1, NULL, 0, NULL, 0, &error));
  g_assert_nonnull(error);
  close(sv[0]);
}

static void
test_request_names(void)
{
  g_assert_cmpstr(vhu_request_name(VHU_GET_FEATURES), ==, "GET_FEATURES");
  g_assert_cmpstr(vhu_request_name(VHU_GPU_SET_SOCKET), ==, "GPU_SET_SOCKET");
  g_assert_cmpstr(vhu_request_name(VHU_GET_STATUS), ==, "GET_STATUS");
  g_assert_cmpstr(vhu_request_name(VHU_REQUEST_MAX), ==, "GET_SHMEM_CONFIG");
  g_assert_cmpstr(vhu_request_name(45), ==, "UNKNOWN");
  g_assert_cmpstr(vhu_request_name(G_MAXUINT32), ==, "UNKNOWN");
}


/* ------------------------------------------------------------------ */
/* /backend: in-process */

static void
test_backend_handshake(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  guint64 features, protocol, v;
  guint8 config[16];
  struct {
    guint32 offset, size, flags;
    guint8 data[16];
  } __attribute__((packed)) cfg = { .offset = 4, .size = 8 };

  /* NOTIFY_ON_EMPTY is legacy-only (virtio 1.3 6.3): not with VERSION_1. */
  features = raw_get_u64(r, VHU_GET_FEATURES);
  g_assert_cmphex(features, ==,
                  BIT(0) | BIT(VHU_F_VERSION_1) | BIT(VHU_F_RING_INDIRECT_DESC)
                      | BIT(VHU_F_RING_EVENT_IDX) | BIT(VHU_F_PROTOCOL_FEATURES));
  protocol = raw_get_u64(r, VHU_GET_PROTOCOL_FEATURES);
  g_assert_cmphex(protocol, ==,
                  BIT(VHU_PF_MQ) | BIT(VHU_PF_REPLY_ACK) | BIT(VHU_PF_CONFIG)
                      | BIT(VHU_PF_BACKEND_REQ) | BIT(VHU_PF_CONFIGURE_MEM_SLOTS)
                      | BIT(VHU_PF_RESET_DEVICE) | BIT(VHU_PF_STATUS) | BIT(VHU_PF_INFLIGHT_SHMFD));

  /* Without REPLY_ACK negotiated, NEED_REPLY gets no ack: the next message
   * from the backend is the reply to GET_QUEUE_NUM. */
  v = 0;
  raw_send(r, VHU_SET_PROTOCOL_FEATURES, VHU_FLAG_NEED_REPLY, &v, 8, NULL, 0);
  raw_send(r, VHU_SET_OWNER, VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0);
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_QUEUE_NUM), ==, 2);

  raw_send(r, VHU_SET_PROTOCOL_FEATURES, 0, &protocol, 8, NULL, 0);
  r->protocol = protocol;
  /* A getter with NEED_REPLY gets exactly one reply. */
  raw_send(r, VHU_GET_FEATURES, VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0);
  g_assert_cmpuint(raw_recv_ack(r, VHU_GET_FEATURES), ==, features);
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_MAX_MEM_SLOTS), ==, VHU_MAX_MEM_SLOTS);
  g_assert_cmpuint(raw_acked(r, VHU_SET_OWNER, NULL, 0, NULL, 0), ==, 0);

  /* Config: reply size equals request size, data from the device. */
  raw_send(r, VHU_GET_CONFIG, 0, &cfg, 12 + 8, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_CONFIG, &cfg, sizeof cfg, NULL), ==, 12 + 8);
  g_assert_cmpuint(cfg.offset, ==, 4);
  g_assert_cmpuint(cfg.size, ==, 8);
  for (guint i = 0; i < 8; i++)
    g_assert_cmpuint(cfg.data[i], ==, 0x14 + i);
  cfg.offset = 0;
  cfg.size = 2;
  cfg.data[0] = 0x55;
  cfg.data[1] = 0x66;
  g_assert_cmpuint(raw_acked(r, VHU_SET_CONFIG, &cfg, 12 + 2, NULL, 0), ==, 0);
  cfg.size = 16;
  raw_send(r, VHU_GET_CONFIG, 0, &cfg, 12 + 16, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_CONFIG, &cfg, sizeof cfg, NULL), ==, 12 + 16);
  memcpy(config, cfg.data, 16);
  g_assert_cmpuint(config[0], ==, 0x55);
  g_assert_cmpuint(config[1], ==, 0x66);
  g_assert_cmpuint(config[2], ==, 0x12);
  /* The device refuses a write: ack 1, session goes on. */
  cfg.size = 1;
  cfg.data[0] = 0xee;
  g_assert_cmpuint(raw_acked(r, VHU_SET_CONFIG, &cfg, 12 + 1, NULL, 0), ==, 1);

  /* Status round trip. */
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_STATUS), ==, 0);
  raw_u64_acked_ok(r, VHU_SET_STATUS, VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER);
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_STATUS), ==, VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER);
  g_assert_cmpuint(vhu_backend_get_status(s->backend), ==,
                   VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER);

  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

static void
run_echo_session(Server *s, gboolean qemu72)
{
  Raw *r = raw_connect(s->path);
  VhuVringState st = { .index = 0 };

  raw_init(r, G_MAXUINT64);
  if (qemu72)
    raw_start_72(r, 2);
  else
    raw_start_10(r, 2);
  for (guint i = 0; i < 5; i++) {
    g_autofree char *text = g_strdup_printf("request %u", i);

    raw_echo(r, i % 2, text);
  }
  /* Stop as QEMU does: disable, GET_VRING_BASE gives last_avail. */
  st.num = 0;
  raw_request(r, VHU_SET_VRING_ENABLE, &st, sizeof st, NULL, 0);
  raw_send(r, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_VRING_BASE, &st, sizeof st, NULL), ==, 8);
  g_assert_cmpuint(st.index, ==, 0);
  g_assert_cmpuint(st.num, ==, 3);
  /* Restart queue 0 where it stopped; requests flow again. */
  raw_start_queue(r, 0, 3, !qemu72);
  raw_echo(r, 0, "after restart");
  raw_free(r);
}

/* @data: TRUE for QEMU 7.2's start sequence, FALSE for QEMU 10's. */
static void
test_backend_start(gconstpointer data)
{
  Server *s = server_new(2);
  int fds = count_fds();

  run_echo_session(s, GPOINTER_TO_INT(data));
  server_check_recovered(s, 1, fds);
  server_free(s);
}

/* Without PROTOCOL_FEATURES in SET_FEATURES, rings are enabled at once. */
static void
test_backend_no_protocol_features(void)
{
  Server *s = server_new(1);
  Raw *r = raw_connect(s->path);
  guint64 features = BIT(VHU_F_VERSION_1);

  raw_get_u64(r, VHU_GET_FEATURES);
  raw_send(r, VHU_SET_OWNER, 0, NULL, 0, NULL, 0);
  raw_send(r, VHU_SET_FEATURES, 0, &features, 8, NULL, 0);
  raw_set_mem_table(r);
  {
    RawQueue *q = &r->q[0];
    VhuVringState num = { .index = 0, .num = q->num };
    VhuVringState base = { .index = 0, .num = 0 };
    VhuVringAddr addr = { .index = 0,
                          .desc_user_addr = raw_uva(q->desc_gpa),
                          .avail_user_addr = raw_uva(q->avail_gpa),
                          .used_user_addr = raw_uva(q->used_gpa) };

    q->kick = new_eventfd();
    q->call = new_eventfd();
    raw_send(r, VHU_SET_VRING_NUM, 0, &num, sizeof num, NULL, 0);
    raw_send(r, VHU_SET_VRING_BASE, 0, &base, sizeof base, NULL, 0);
    raw_send(r, VHU_SET_VRING_ADDR, 0, &addr, sizeof addr, NULL, 0);
    raw_vring_fd(r, VHU_SET_VRING_CALL, 0, q->call);
    raw_vring_fd(r, VHU_SET_VRING_KICK, 0, q->kick);
  }
  raw_echo(r, 0, "no SET_VRING_ENABLE needed");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* A source that counts the main-loop iterations of its context (GLib
 * prepares every source once per iteration) and never fires. */
typedef struct {
  GSource source;
  gint iterations; /* atomic */
} CountSource;

static gboolean
count_prepare(GSource *source, gint *timeout)
{
  g_atomic_int_inc(&((CountSource *)source)->iterations);
  *timeout = -1;
  return FALSE;
}

static GSourceFuncs count_funcs = { .prepare = count_prepare };

/* A guest kick is handled in the queue thread's own loop, beside the
 * context: it costs no pass through GLib's prepare/check/dispatch at all
 * (which costs about as much as the wake-up itself). */
static void
test_backend_kick_wakeups(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  GMainContext *qctx = vhu_backend_get_queue_context(s->backend);
  GSource *counter = g_source_new(&count_funcs, sizeof(CountSource));
  const guint rounds = 50;
  guint kicks, iterations;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "warm-up");
  g_source_attach(counter, qctx);
  context_barrier(qctx);
  g_atomic_int_set(&((CountSource *)counter)->iterations, 0);
  g_mutex_lock(&s->lock);
  kicks = s->kicks;
  g_mutex_unlock(&s->lock);
  for (guint i = 0; i < rounds; i++)
    raw_echo(r, 0, "one request, one kick");
  context_barrier(qctx);
  g_mutex_lock(&s->lock);
  kicks = s->kicks - kicks;
  g_mutex_unlock(&s->lock);
  iterations = (guint)g_atomic_int_get(&((CountSource *)counter)->iterations);
  g_test_message("%u kicks handled in %u iterations", kicks, iterations);
  g_assert_cmpuint(kicks, ==, rounds);
  /* The barrier's own idle costs an iteration or two; the kicks none. */
  g_assert_cmpuint(iterations, <=, 3);
  g_source_destroy(counter);
  g_source_unref(counter);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* vhu_backend_kick runs queue_kick without a guest kick. */
static void
test_backend_kick_api(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  guint32 id, len;
  guint16 head;
  int kick;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  kick = r->q[1].kick;
  r->q[1].kick = -1; /* submit without kicking */
  head = raw_submit(r, 1, "quiet", 6, 16);
  vhu_backend_kick(s->backend, 1);
  g_assert_true(raw_wait_used(r, 1, 1, TIMEOUT_MS));
  raw_get_used(r, 1, &id, &len);
  g_assert_cmpuint(id, ==, head);
  g_assert_cmpuint(len, ==, 6);
  r->q[1].kick = kick;
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* RESET_DEVICE: rings stop, the device resets, status clears; restartable. */
static void
test_backend_reset_device(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  int sv[2];
  int fds;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "before reset");
  /* A device request that keeps its fd. */
  socketpair_or_die(sv);
  fds = count_fds();
  g_assert_cmpuint(raw_acked(r, VHU_GPU_SET_SOCKET, NULL, 0, &sv[1], 1), ==, 0);
  close(sv[1]);
  g_assert_cmpint(count_fds(), ==, fds); /* one closed here, one kept there */
  g_mutex_lock(&s->lock);
  g_assert_cmpint(s->device_fd, >=, 0);
  g_mutex_unlock(&s->lock);

  g_assert_cmpuint(raw_acked(r, VHU_RESET_DEVICE, NULL, 0, NULL, 0), ==, 0);
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_STATUS), ==, 0);
  g_mutex_lock(&s->lock);
  g_assert_cmpuint(s->resets, ==, 1);
  g_assert_cmpint(s->device_fd, ==, -1);
  g_mutex_unlock(&s->lock);
  /* The peer of the device's socket sees it closed. */
  g_assert_true(tu_wait_readable(sv[0], TIMEOUT_MS));
  close(sv[0]);

  /* The memory table survives a device reset (QEMU does not resend it). */
  raw_close_queue_fds(r);
  raw_start_10_full(r, 2, FALSE);
  raw_echo(r, 1, "after reset");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* A hostile exchange run against a fresh session. */
typedef void (*HostileFunc)(Raw *r);

static void
run_hostile(HostileFunc func, gboolean init)
{
  Server *s = server_new(2);
  int fds = count_fds();
  Raw *r = raw_connect(s->path);

  if (init)
    raw_init(r, G_MAXUINT64);
  func(r);
  raw_free(r);
  server_check_recovered(s, 1, fds);
  server_free(s);
}

/* Sends @req without NEED_REPLY and expects the connection to be dropped
 * with one warning naming the request. */
static void
expect_dropped(Raw *r, guint32 req, const void *payload, gsize size, const int *fds, guint n_fds)
{
  guint mark = log_mark();

  raw_send(r, req, 0, payload, size, fds, n_fds);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
  g_assert_cmpuint(log_count_since(mark, vhu_request_name(req)), ==, 1);
}

/* Sends @req with NEED_REPLY, expects ack 1, one warning, and a live
 * session afterwards. */
static void
expect_nack(Raw *r, guint32 req, const void *payload, gsize size, const int *fds, guint n_fds)
{
  guint mark = log_mark();

  g_assert_cmpuint(raw_acked(r, req, payload, size, fds, n_fds), ==, 1);
  g_assert_cmpuint(log_count_since(mark, vhu_request_name(req)), ==, 1);
  g_assert_cmpuint(raw_get_u64(r, VHU_GET_QUEUE_NUM), ==, 2);
}

static void
hostile_unknown_id(Raw *r)
{
  expect_nack(r, 99, NULL, 0, NULL, 0);
  expect_nack(r, VHU_VRING_KICK, NULL, 0, NULL, 0);
  expect_dropped(r, 1000, NULL, 0, NULL, 0);
}

static void
hostile_wrong_size(Raw *r)
{
  guint8 junk[64] = { 0 };

  expect_nack(r, VHU_SET_FEATURES, junk, 4, NULL, 0);
  expect_nack(r, VHU_SET_OWNER, junk, 8, NULL, 0);
  expect_nack(r, VHU_SET_VRING_ADDR, junk, 39, NULL, 0);
  expect_nack(r, VHU_SET_VRING_NUM, junk, 12, NULL, 0);
  expect_nack(r, VHU_ADD_MEM_REG, junk, 32, &r->memfd, 1);
  expect_nack(r, VHU_SET_MEM_TABLE, junk, 4, NULL, 0);
  expect_nack(r, VHU_SET_CONFIG, junk, 11, NULL, 0);
  expect_nack(r, VHU_SET_INFLIGHT_FD, junk, 20, &r->memfd, 1);
  expect_dropped(r, VHU_SET_STATUS, junk, 2, NULL, 0);
}

/* Getters have their own reply: malformed ones drop the connection. */
static void
hostile_getter_size(Raw *r)
{
  guint64 v = 0;

  expect_dropped(r, VHU_GET_FEATURES, &v, 8, NULL, 0);
}

static void
hostile_getter_index(Raw *r)
{
  VhuVringState st = { .index = 2 };

  expect_dropped(r, VHU_GET_VRING_BASE, &st, sizeof st, NULL, 0);
}

static void
hostile_mem_table(Raw *r)
{
  struct {
    guint32 nregions, padding;
    VhuMemRegionDesc regions[9];
  } __attribute__((packed)) table = { .nregions = 9 };
  int fds[8];

  for (guint i = 0; i < 8; i++)
    fds[i] = r->memfd;
  /* Nine regions (over the limit of eight). */
  for (guint i = 0; i < 9; i++)
    table.regions[i] = (VhuMemRegionDesc){ .guest_phys_addr = i * 0x10000ull,
                                           .memory_size = 0x10000,
                                           .userspace_addr = RAW_UVA_BASE + i * 0x10000ull,
                                           .mmap_offset = i * 0x10000ull };
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 9 * 32, fds, 8);
  /* Two regions, one fd; then two fds for one region. */
  table.nregions = 2;
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 2 * 32, fds, 1);
  table.nregions = 1;
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 32, fds, 2);
  /* Overlapping regions. */
  table.nregions = 2;
  table.regions[1].guest_phys_addr = 0x8000;
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 2 * 32, fds, 2);
  /* Region beyond the end of its fd (mmap of a 2 MiB memfd at 4 GiB). */
  table.nregions = 1;
  table.regions[0].mmap_offset = 1ull << 32;
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 32, fds, 1);
  /* Size overflow. */
  table.regions[0].mmap_offset = 0;
  table.regions[0].memory_size = G_MAXUINT64;
  expect_nack(r, VHU_SET_MEM_TABLE, &table, 8 + 32, fds, 1);
  /* ADD_MEM_REG without fd, REM_MEM_REG of an unknown region. */
  {
    VhuMemSingleRegion reg = { .region = raw_regions[0] };

    expect_nack(r, VHU_ADD_MEM_REG, &reg, sizeof reg, NULL, 0);
    expect_nack(r, VHU_REM_MEM_REG, &reg, sizeof reg, NULL, 0);
    /* Added twice: overlap. */
    g_assert_cmpuint(raw_acked(r, VHU_ADD_MEM_REG, &reg, sizeof reg, &r->memfd, 1), ==, 0);
    expect_nack(r, VHU_ADD_MEM_REG, &reg, sizeof reg, &r->memfd, 1);
    /* A stray fd on REM_MEM_REG is tolerated (and closed). */
    g_assert_cmpuint(raw_acked(r, VHU_REM_MEM_REG, &reg, sizeof reg, &r->memfd, 1), ==, 0);
  }
  table.nregions = 2;
  table.regions[0] = raw_regions[0];
  table.regions[1] = raw_regions[1];
  expect_dropped(r, VHU_SET_MEM_TABLE, &table, 8 + 2 * 32, fds, 1);
}

static void
hostile_rings(Raw *r)
{
  VhuVringState st = { .index = 2, .num = 16 };
  VhuVringAddr addr = { .index = 0,
                        .desc_user_addr = RAW_UVA_BASE + 0x500000,
                        .avail_user_addr = RAW_UVA_BASE + 0x1000,
                        .used_user_addr = RAW_UVA_BASE + 0x2000 };
  guint64 v;
  int efd = new_eventfd();

  raw_set_mem_table(r);
  /* Queue index out of range, for every ring message. */
  expect_nack(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
  expect_nack(r, VHU_SET_VRING_BASE, &st, sizeof st, NULL, 0);
  expect_nack(r, VHU_SET_VRING_ENABLE, &st, sizeof st, NULL, 0);
  v = 7;
  expect_nack(r, VHU_SET_VRING_KICK, &v, 8, &efd, 1);
  expect_nack(r, VHU_SET_VRING_CALL, &v, 8, &efd, 1);
  expect_nack(r, VHU_SET_VRING_ERR, &v, 8, &efd, 1);
  addr.index = 5;
  expect_nack(r, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0);
  /* Bad ring sizes. */
  st.index = 0;
  st.num = 3;
  expect_nack(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
  st.num = 0;
  expect_nack(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
  st.num = 512; /* above the device's 256 */
  expect_nack(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
  st.num = 16;
  g_assert_cmpuint(raw_acked(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0), ==, 0);
  /* Ring address not mapped. */
  addr.index = 0;
  expect_nack(r, VHU_SET_VRING_ADDR, &addr, sizeof addr, NULL, 0);
  /* Base out of range, enable value not 0/1. */
  st.num = 0x10000;
  expect_nack(r, VHU_SET_VRING_BASE, &st, sizeof st, NULL, 0);
  st.num = 2;
  expect_nack(r, VHU_SET_VRING_ENABLE, &st, sizeof st, NULL, 0);
  /* fd missing, fd extra, unknown bits. */
  v = 0;
  expect_nack(r, VHU_SET_VRING_KICK, &v, 8, NULL, 0);
  v = VHU_VRING_NOFD;
  expect_nack(r, VHU_SET_VRING_CALL, &v, 8, &efd, 1);
  v = 0x200;
  expect_nack(r, VHU_SET_VRING_ERR, &v, 8, &efd, 1);
  /* Kick on a ring that cannot start (no address). */
  v = 1;
  expect_nack(r, VHU_SET_VRING_KICK, &v, 8, &efd, 1);
  close(efd);
  v = 0;
  expect_dropped(r, VHU_SET_VRING_KICK, &v, 8, NULL, 0);
}

static void
hostile_fds(Raw *r)
{
  int fds[3] = { new_eventfd(), new_eventfd(), r->memfd };
  guint64 v;

  /* fds where none are expected. */
  expect_nack(r, VHU_SET_OWNER, NULL, 0, fds, 3);
  v = BIT(VHU_F_VERSION_1);
  expect_nack(r, VHU_SET_FEATURES, &v, 8, fds, 1);
  expect_nack(r, VHU_SET_BACKEND_REQ_FD, NULL, 0, NULL, 0);
  expect_nack(r, VHU_SET_BACKEND_REQ_FD, NULL, 0, fds, 2);
  /* Logging was not offered: refused, fds closed, session kept. */
  {
    guint64 log[2] = { 4096, 0 };
    guint mark = log_mark();

    g_assert_cmpuint(raw_acked(r, VHU_SET_LOG_BASE, log, sizeof log, fds, 1), ==, 1);
    raw_send(r, VHU_SET_LOG_FD, 0, NULL, 0, fds, 1);
    g_assert_cmpuint(raw_get_u64(r, VHU_GET_QUEUE_NUM), ==, 2);
    g_assert_cmpuint(log_count_since(mark, "SET_LOG_"), ==, 2);
  }
  /* Getter with an fd: dropped. */
  expect_dropped(r, VHU_GET_STATUS, NULL, 0, fds, 2);
  close(fds[0]);
  close(fds[1]);
}

static void
hostile_too_many_fds(Raw *r)
{
  send_owner_with_fds(r->sock, 10);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
}

static void
hostile_header_only(Raw *r)
{
  VhuMsgHeader h = { .request = VHU_SET_FEATURES, .flags = VHU_VERSION, .size = 8 };

  /* The header promises 8 bytes, then the frontend goes away. */
  g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
}

static void
hostile_stall(Raw *r)
{
  VhuMsgHeader h = { .request = VHU_SET_FEATURES, .flags = VHU_VERSION, .size = 8 };
  gint64 t0 = g_get_monotonic_time();
  guint mark = log_mark();

  /* Half a payload, then silence: dropped after the message timeout. */
  g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
  g_assert_cmpint(send(r->sock, "1234", 4, MSG_NOSIGNAL), ==, 4);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
  g_assert_cmpint(g_get_monotonic_time() - t0, <, 4 * G_USEC_PER_SEC);
  /* One line naming the request and saying why. */
  g_assert_cmpuint(log_count_since(mark, "SET_FEATURES (2) rejected: timed out in the middle of a "
                                         "message; dropping the connection"),
                   ==, 1);
}

static void
hostile_mid_message(Raw *r)
{
  VhuMsgHeader h = { .request = VHU_SET_MEM_TABLE, .flags = VHU_VERSION, .size = 72 };

  raw_start_10(r, 2);
  raw_echo(r, 0, "before");
  g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
  g_assert_cmpint(send(r->sock, "\2\0\0\0\0\0\0\0", 8, MSG_NOSIGNAL), ==, 8);
}

static void
hostile_oversized(Raw *r)
{
  VhuMsgHeader h = { .request = VHU_SET_CONFIG, .flags = VHU_VERSION, .size = 1 << 20 };
  guint mark = log_mark();

  g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
  g_assert_cmpuint(log_count_since(mark, "SET_CONFIG (25) rejected: payload of 1048576 bytes is "
                                         "larger than 4096"),
                   ==, 1);
}

static void
hostile_bad_version(Raw *r)
{
  guint mark = log_mark();
  VhuMsgHeader h = { .request = VHU_GET_FEATURES, .flags = 0x2, .size = 0 };

  g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
  g_assert_cmpuint(log_count_since(mark, "version"), ==, 1);
}

static void
hostile_config(Raw *r)
{
  struct {
    guint32 offset, size, flags;
    guint8 data[300];
  } __attribute__((packed)) cfg = { .offset = 12, .size = 8 };

  /* Out of range (12 + 8 > 16), zero size, size != payload: empty reply. */
  raw_send(r, VHU_GET_CONFIG, 0, &cfg, 12 + 8, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_CONFIG, NULL, 0, NULL), ==, 0);
  cfg.offset = 0;
  cfg.size = 0;
  raw_send(r, VHU_GET_CONFIG, 0, &cfg, 12, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_CONFIG, NULL, 0, NULL), ==, 0);
  cfg.size = 4;
  raw_send(r, VHU_GET_CONFIG, 0, &cfg, 12 + 8, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_CONFIG, NULL, 0, NULL), ==, 0);
  cfg.offset = G_MAXUINT32 - 1;
  expect_nack(r, VHU_SET_CONFIG, &cfg, 12 + 4, NULL, 0);
  cfg.offset = 0;
  cfg.size = 257;
  expect_nack(r, VHU_SET_CONFIG, &cfg, 12 + 257, NULL, 0);
}

static void
hostile_features(Raw *r)
{
  guint64 v = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES) | BIT(50);

  /* Bits we never offered: refused. */
  expect_nack(r, VHU_SET_FEATURES, &v, 8, NULL, 0);
  v = BIT(VHU_PF_LOG_SHMFD) | BIT(VHU_PF_REPLY_ACK);
  expect_nack(r, VHU_SET_PROTOCOL_FEATURES, &v, 8, NULL, 0);
  /* ANY_LAYOUT and RING_RESET come through QEMU unfiltered: tolerated. */
  v = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES) | BIT(VHU_F_ANY_LAYOUT) | BIT(40);
  raw_u64_acked_ok(r, VHU_SET_FEATURES, v);
  v = 0x1ff;
  expect_nack(r, VHU_SET_STATUS, &v, 8, NULL, 0);
}

static void
hostile_inflight(Raw *r)
{
  VhuInflightMsg inf = { .num_queues = 2, .queue_size = 16 };
  int fd = -1, unsealed;
  struct stat st;

  /* GET_INFLIGHT_FD: a sealed, zeroed memfd of the right size. */
  raw_send(r, VHU_GET_INFLIGHT_FD, 0, &inf, sizeof inf, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_INFLIGHT_FD, &inf, sizeof inf, &fd), ==, sizeof inf);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpuint(inf.mmap_offset, ==, 0);
  g_assert_cmpuint(inf.num_queues, ==, 2);
  g_assert_cmpuint(inf.queue_size, ==, 16);
  g_assert_cmpint(fstat(fd, &st), ==, 0);
  g_assert_cmpuint(inf.mmap_size, ==, st.st_size);
  g_assert_cmpuint(inf.mmap_size, >=, 2 * (16 + 16 * 16));
  g_assert_true(fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK);
  g_assert_cmpint(ftruncate(fd, 0), <, 0);
  /* Bad requests: an empty answer without fd. */
  inf.num_queues = 3;
  raw_send(r, VHU_GET_INFLIGHT_FD, 0, &inf, sizeof inf, NULL, 0);
  inf.mmap_size = 1;
  g_assert_cmpuint(raw_recv(r, VHU_GET_INFLIGHT_FD, &inf, sizeof inf, NULL), ==, sizeof inf);
  g_assert_cmpuint(inf.mmap_size, ==, 0);
  inf = (VhuInflightMsg){ .num_queues = 2, .queue_size = 24 };
  raw_send(r, VHU_GET_INFLIGHT_FD, 0, &inf, sizeof inf, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_INFLIGHT_FD, &inf, sizeof inf, NULL), ==, sizeof inf);
  g_assert_cmpuint(inf.mmap_size, ==, 0);

  /* SET_INFLIGHT_FD: too large for the fd, unsealed fd, missing fd. */
  inf = (VhuInflightMsg){ .mmap_size = 1 << 20, .num_queues = 2, .queue_size = 16 };
  expect_nack(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &fd, 1);
  inf.mmap_size = st.st_size;
  unsealed = memfd_create("unsealed", MFD_CLOEXEC);
  g_assert_cmpint(ftruncate(unsealed, st.st_size), ==, 0);
  expect_nack(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &unsealed, 1);
  close(unsealed);
  expect_nack(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, NULL, 0);
  inf.mmap_offset = G_MAXUINT64;
  expect_nack(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &fd, 1);
  /* The real thing works. */
  inf.mmap_offset = 0;
  g_assert_cmpuint(raw_acked(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &fd, 1), ==, 0);
  close(fd);
  raw_start_10(r, 2);
  raw_echo(r, 0, "with inflight tracking");
}

static void
test_hostile(gconstpointer data)
{
  run_hostile((HostileFunc)data, TRUE);
}

static void
test_hostile_noinit(gconstpointer data)
{
  run_hostile((HostileFunc)data, FALSE);
}

/* Hostile messages after the queues run: the rings stop and a frontend
 * served next starts from scratch. */
static void
hostile_running_then_garbage(Raw *r)
{
  raw_start_10(r, 2);
  raw_echo(r, 1, "running");
  expect_dropped(r, 77, "xx", 2, NULL, 0);
}

/* A started ring keeps its size and position: SET_VRING_NUM and
 * SET_VRING_BASE are refused until GET_VRING_BASE stops it. */
static void
hostile_started_ring(Raw *r)
{
  VhuVringState st = { .index = 0, .num = 16 };

  raw_start_10(r, 2);
  expect_nack(r, VHU_SET_VRING_NUM, &st, sizeof st, NULL, 0);
  st.num = 5;
  expect_nack(r, VHU_SET_VRING_BASE, &st, sizeof st, NULL, 0);
  raw_echo(r, 0, "ring unchanged");
}

/* One frontend at a time: a second waits in the backlog until the first
 * leaves. */
static void
test_backend_backlog(void)
{
  Server *s = server_new(2);
  Raw *a = raw_connect(s->path);
  Raw *b = raw_connect(s->path);

  raw_init(a, G_MAXUINT64);
  raw_send(b, VHU_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0);
  raw_start_10(a, 2);
  raw_echo(a, 0, "first frontend");
  /* b is not served while a is connected (checked after a's full round
   * trip, which the backend handled after b's request arrived). */
  g_assert_false(tu_wait_readable(b->sock, 0));
  raw_free(a);
  g_assert_cmpuint(raw_recv_ack(b, VHU_GET_QUEUE_NUM), ==, 2);
  raw_init(b, G_MAXUINT64);
  raw_start_72(b, 2);
  raw_echo(b, 1, "second frontend");
  raw_free(b);
  server_wait_disconnects(s, 2);
  server_free(s);
}

static void
test_backend_single_client(void)
{
  VhuBackendOptions options = { .single_client = TRUE };
  Server *s = server_new_full(2, &options, TRUE);
  Raw *r;

  server_run(s);
  r = raw_connect(s->path);
  raw_init(r, G_MAXUINT64);
  raw_free(r);
  server_wait_disconnects(s, 1);
  g_assert_false(vhu_backend_is_serving(s->backend));
  server_free(s);
}

static void
test_backend_serve_fd(void)
{
  g_autoptr(GError) error = NULL;
  Server *s = server_new_full(2, NULL, FALSE);
  int sv[2];
  Raw *r = raw_new();

  socketpair_or_die(sv);
  g_assert_true(vhu_backend_serve_fd(s->backend, sv[0], &error));
  g_assert_no_error(error);
  server_run(s);
  r->sock = sv[1];
  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 1, "over an inherited fd");
  raw_free(r);
  server_wait_disconnects(s, 1);
  g_assert_false(vhu_backend_is_serving(s->backend));
  server_free(s);

  /* Not a stream socket: refused (and the fd is taken). */
  s = server_new_full(1, NULL, FALSE);
  g_assert_false(vhu_backend_serve_fd(s->backend, new_eventfd(), &error));
  g_assert_nonnull(error);
  server_free(s);
}

static void
test_backend_socket_file(void)
{
  g_autoptr(GError) error = NULL;
  VhuBackendOptions options = { .socket_mode = 0660 };
  Server *s = server_new_full(1, NULL, FALSE);
  struct stat st;
  int fd;

  /* A regular file is never replaced. */
  g_assert_true(g_file_set_contents(s->path, "precious", -1, NULL));
  g_assert_false(vhu_backend_listen(s->backend, s->path, &error));
  g_assert_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS);
  g_clear_error(&error);
  g_unlink(s->path);

  /* A stale socket is; the new one is 0600. */
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  {
    struct sockaddr_un addr = { .sun_family = AF_UNIX };

    g_strlcpy(addr.sun_path, s->path, sizeof addr.sun_path);
    g_assert_cmpint(bind(fd, (struct sockaddr *)&addr, sizeof addr), ==, 0);
  }
  close(fd);
  g_assert_true(vhu_backend_listen(s->backend, s->path, &error));
  g_assert_no_error(error);
  g_assert_cmpint(lstat(s->path, &st), ==, 0);
  g_assert_true(S_ISSOCK(st.st_mode));
  g_assert_cmpint(st.st_mode & 0777, ==, 0600);
  /* Listening twice is refused. */
  g_assert_false(vhu_backend_listen(s->backend, s->path, &error));
  g_clear_error(&error);
  server_free(s);

  s = server_new_full(1, &options, TRUE);
  g_assert_cmpint(lstat(s->path, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0660);
  server_free(s);
}

/* Makes descriptor @d of queue @i loop onto itself and publishes it, without
 * kicking. */
static void
raw_publish_loop(Raw *r, guint i, guint16 d)
{
  RawQueue *q = &r->q[i];

  q->desc[d]
      = (struct vring_desc){ .addr = q->buf_gpa, .len = 16, .flags = VRING_DESC_F_NEXT, .next = d };
  q->avail->ring[q->avail_idx % q->num] = d;
  q->avail_idx++;
  __atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
}

/* The log line of a ring broken by raw_publish_loop(r, @i, @d). */
static char *
loop_line(Raw *r, guint i, guint16 d)
{
  return g_strdup_printf("echo: queue %u broken: head %u: chain longer than the ring size %u (a "
                         "loop); device needs reset",
                         i, d, r->q[i].num);
}

/* The guest breaks queue 0: NEEDS_RESET, err fd signalled, one log line that
 * says why; queue 1 keeps working; a restart of the queue clears the ring. */
static void
test_backend_broken_ring(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  g_autofree char *line = NULL;
  RawQueue *q;
  guint64 one = 1, v;
  guint mark;
  int err = new_eventfd();

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_vring_fd(r, VHU_SET_VRING_ERR, 0, err);
  raw_echo(r, 0, "healthy");
  mark = log_mark();

  /* A descriptor that loops onto itself, popped by queue_kick on the queue
   * thread. */
  q = &r->q[0];
  raw_publish_loop(r, 0, 4);
  g_assert_cmpint(write(q->kick, &one, 8), ==, 8);
  g_assert_true(tu_wait_readable(err, TIMEOUT_MS));
  g_assert_cmpint(read(err, &v, 8), ==, 8);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS) & VHU_STATUS_NEEDS_RESET, ==,
                  VHU_STATUS_NEEDS_RESET);
  raw_echo(r, 1, "other queue still works");
  /* More kicks on the broken ring: no more log lines, nothing used. */
  g_assert_cmpint(write(q->kick, &one, 8), ==, 8);
  vhu_backend_kick(s->backend, 0);
  raw_echo(r, 1, "still fine");
  context_barrier(vhu_backend_get_queue_context(s->backend));
  line = loop_line(r, 0, 4);
  g_assert_cmpuint(log_count_since(mark, line), ==, 1);
  g_assert_cmpuint(log_count_since(mark, "broken"), ==, 1);
  /* Status writes keep NEEDS_RESET until the driver writes 0. */
  raw_u64_acked_ok(r, VHU_SET_STATUS, VHU_STATUS_DRIVER_OK);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS), ==,
                  VHU_STATUS_DRIVER_OK | VHU_STATUS_NEEDS_RESET);
  raw_u64_acked_ok(r, VHU_SET_STATUS, 0);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS), ==, 0);
  close(err);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

typedef struct {
  VhuBackend *backend;
  guint qidx;
  gboolean popped;
} OutsidePop;

/* What a device does from a source of its own: pop (the ring locks itself). */
static void
outside_pop(OutsidePop *o)
{
  g_autoptr(GError) error = NULL;
  VhuElem *elem;

  elem = vhu_vring_pop(vhu_backend_get_vring(o->backend, o->qidx), &error);
  g_assert_null(elem);
  o->popped = TRUE;
}

static gboolean
outside_pop_idle(gpointer data)
{
  outside_pop(data);
  return G_SOURCE_REMOVE;
}

/* A ring broken by a pop outside queue_kick is reported once, with its
 * reason, when the popper unlocks: from a device source on the queue thread
 * and from any other thread. */
static void
test_backend_broken_ring_outside_kick(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  OutsidePop o = { .backend = s->backend, .qidx = 0 };
  g_autofree char *line0 = NULL, *line1 = NULL;
  GSource *idle;
  guint64 v;
  guint mark;
  int err0 = new_eventfd(), err1 = new_eventfd();

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_vring_fd(r, VHU_SET_VRING_ERR, 0, err0);
  raw_vring_fd(r, VHU_SET_VRING_ERR, 1, err1);
  raw_echo(r, 0, "healthy");
  raw_echo(r, 1, "healthy");
  mark = log_mark();

  /* Queue thread, from a source the "device" attached to its context. */
  raw_publish_loop(r, 0, 6);
  idle = g_idle_source_new();
  g_source_set_callback(idle, outside_pop_idle, &o, NULL);
  g_source_attach(idle, vhu_backend_get_queue_context(s->backend));
  g_source_unref(idle);
  g_assert_true(tu_wait_readable(err0, TIMEOUT_MS));
  g_assert_cmpint(read(err0, &v, 8), ==, 8);
  context_barrier(vhu_backend_get_queue_context(s->backend));
  g_assert_true(o.popped);
  line0 = loop_line(r, 0, 6);
  g_assert_cmpuint(log_count_since(mark, line0), ==, 1);

  /* This thread, on the other queue; the first one stays reported once. */
  raw_publish_loop(r, 1, 2);
  o.qidx = 1;
  outside_pop(&o);
  g_assert_true(tu_wait_readable(err1, TIMEOUT_MS));
  g_assert_cmpint(read(err1, &v, 8), ==, 8);
  o.qidx = 0;
  outside_pop(&o);
  line1 = loop_line(r, 1, 2);
  g_assert_cmpuint(log_count_since(mark, line1), ==, 1);
  g_assert_cmpuint(log_count_since(mark, line0), ==, 1);
  g_assert_cmpuint(log_count_since(mark, "broken"), ==, 2);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS) & VHU_STATUS_NEEDS_RESET, ==,
                  VHU_STATUS_NEEDS_RESET);
  close(err0);
  close(err1);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* The device sets NEEDS_RESET itself: every ring's err fd is signalled,
 * one log line however often it happens. */
static void
test_backend_device_needs_reset(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  guint mark = log_mark();
  int err = new_eventfd();
  guint64 v;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_vring_fd(r, VHU_SET_VRING_ERR, 1, err);
  raw_echo(r, 0, "RESET! please");
  g_assert_true(tu_wait_readable(err, TIMEOUT_MS));
  g_assert_cmpint(read(err, &v, 8), ==, 8);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS), ==,
                  VHU_STATUS_ACKNOWLEDGE | VHU_STATUS_DRIVER | VHU_STATUS_FEATURES_OK
                      | VHU_STATUS_DRIVER_OK | VHU_STATUS_NEEDS_RESET);
  raw_echo(r, 0, "RESET! again");
  raw_echo(r, 1, "queues still answer");
  g_assert_cmpuint(log_count_since(mark, "needs reset"), ==, 1);
  /* A device reset clears it. */
  g_assert_cmpuint(raw_acked(r, VHU_RESET_DEVICE, NULL, 0, NULL, 0), ==, 0);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS), ==, 0);
  close(err);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* ------------------------------------------------------------------ */
/* /null: the vhu-null-backend program */

typedef struct {
  GSubprocess *proc;
  char *dir;
  char *path;
} NullProc;

static const char *
null_backend_path(void)
{
  const char *path = g_getenv("VHU_NULL_BACKEND");

  if (path == NULL || !g_file_test(path, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("VHU_NULL_BACKEND is not set (run through meson test)");
    return NULL;
  }
  return path;
}

static GSubprocess *
spawn_null(GSubprocessLauncher *launcher, const char *const *extra)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();

  g_ptr_array_add(argv, (gpointer)null_backend_path());
  for (guint i = 0; extra[i] != NULL; i++)
    g_ptr_array_add(argv, (gpointer)extra[i]);
  g_ptr_array_add(argv, NULL);
  return tu_spawn_ready(launcher, (const char *const *)argv->pdata, TIMEOUT_MS);
}

/* Starts the null device; its stderr goes to @stderr_path when given. */
static NullProc *
null_start_full(const char *dir, const char *const *extra, const char *stderr_path)
{
  g_autoptr(GSubprocessLauncher) launcher
      = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  NullProc *p = g_new0(NullProc, 1);
  g_autoptr(GPtrArray) args = g_ptr_array_new();

  p->dir = dir != NULL ? g_strdup(dir) : tu_make_tmpdir("vhu-backend-XXXXXX");
  p->path = g_build_filename(p->dir, "null.sock", NULL);
  g_ptr_array_add(args, (gpointer) "--socket-path");
  g_ptr_array_add(args, p->path);
  for (guint i = 0; extra != NULL && extra[i] != NULL; i++)
    g_ptr_array_add(args, (gpointer)extra[i]);
  g_ptr_array_add(args, NULL);
  if (stderr_path != NULL)
    g_subprocess_launcher_set_stderr_file_path(launcher, stderr_path);
  p->proc = spawn_null(launcher, (const char *const *)args->pdata);
  return p;
}

static NullProc *
null_start(const char *dir, const char *const *extra)
{
  return null_start_full(dir, extra, NULL);
}

/* Lines of @path that contain @needle. */
static guint
file_count_lines(const char *path, const char *needle)
{
  g_autofree char *text = NULL;
  g_auto(GStrv) lines = NULL;
  guint n = 0;

  g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
  lines = g_strsplit(text, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++) {
    if (strstr(lines[i], needle) != NULL) {
      g_test_message("%s", lines[i]);
      n++;
    }
  }
  return n;
}

/* Frees @p, whose process is gone; its directory stays with @keep_dir. */
static void
null_free(NullProc *p, gboolean keep_dir)
{
  g_object_unref(p->proc);
  if (!keep_dir)
    g_rmdir(p->dir);
  g_free(p->dir);
  g_free(p->path);
  g_free(p);
}

/* SIGTERM: a clean exit that removes the socket file. */
static void
null_stop(NullProc *p, gboolean keep_dir)
{
  g_subprocess_send_signal(p->proc, SIGTERM);
  g_assert_cmpint(tu_wait_exit(p->proc, TIMEOUT_MS), ==, 0);
  g_assert_false(g_file_test(p->path, G_FILE_TEST_EXISTS));
  null_free(p, keep_dir);
}

static void
test_null_frontend(void)
{
  g_autoptr(GError) error = NULL;
  NullProc *p;
  VhuFrontend *fe;
  const guint sizes[2] = { 64, 16 };
  guint8 config[16], status = 0;

  if (null_backend_path() == NULL)
    return;
  p = null_start(NULL, NULL);
  fe = vhu_frontend_connect(p->path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(vhu_frontend_get_num_queues(fe), ==, 2);
  g_assert_true(vhu_frontend_has_protocol_feature(fe, VHU_PF_CONFIG));
  g_assert_true(vhu_frontend_get_config(fe, 0, config, sizeof config, &error));
  g_assert_no_error(error);
  for (guint i = 0; i < 16; i++)
    g_assert_cmpuint(config[i], ==, 0xa0 + i);
  g_assert_true(vhu_frontend_add_region(fe, 0x100000, 4 << 20, &error));
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_start(fe, G_MAXUINT64, sizes, 2, &error));
  g_assert_no_error(error);
  for (guint round = 0; round < 3; round++) {
    for (guint qi = 0; qi < 2; qi++) {
      g_autofree char *req = g_strdup_printf("round %u queue %u", round, qi);
      char resp[64] = { 0 };
      gssize n = vhu_driver_queue_transact(vhu_frontend_get_queue(fe, qi), req, strlen(req) + 1,
                                           resp, sizeof resp, &error);

      g_assert_no_error(error);
      g_assert_cmpint(n, ==, strlen(req) + 1);
      g_assert_cmpstr(resp, ==, req);
    }
  }
  g_assert_true(vhu_frontend_get_status(fe, &status, &error));
  g_assert_no_error(error);
  g_assert_true(status & VHU_STATUS_DRIVER_OK);
  g_assert_false(status & VHU_STATUS_NEEDS_RESET);
  g_assert_true(vhu_frontend_stop(fe, &error));
  g_assert_no_error(error);
  vhu_frontend_free(fe);

  /* The next frontend starts from a clean device. */
  fe = vhu_frontend_connect(p->path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_get_status(fe, &status, &error));
  g_assert_cmpuint(status, ==, 0);
  vhu_frontend_free(fe);
  null_stop(p, FALSE);
}

/* Raw QEMU 7.2 sequence plus hostile traffic against the real process. */
static void
test_null_hostile_then_fresh(void)
{
  NullProc *p;
  Raw *r;

  if (null_backend_path() == NULL)
    return;
  p = null_start(NULL, NULL);
  r = raw_connect(p->path);
  raw_init(r, G_MAXUINT64);
  raw_start_72(r, 2);
  raw_echo(r, 0, "7.2 style");
  raw_send(r, 4242, 0, NULL, 0, &r->memfd, 1);
  g_assert_true(raw_closed(r, TIMEOUT_MS));
  raw_free(r);

  r = raw_connect(p->path);
  {
    VhuMsgHeader h = { .request = VHU_SET_FEATURES, .flags = VHU_VERSION, .size = 8 };

    g_assert_cmpint(send(r->sock, &h, sizeof h, MSG_NOSIGNAL), ==, sizeof h);
    g_assert_true(raw_closed(r, TIMEOUT_MS));
  }
  raw_free(r);

  r = raw_connect(p->path);
  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 1, "10 style after hostile frontends");
  raw_free(r);
  null_stop(p, FALSE);
}

/* The guest corrupts queue 0 through the frontend library's raw ring
 * access; queue 1 keeps working, GET_STATUS reports NEEDS_RESET and the
 * process logs one line on stderr that says which queue broke and why. */
static void
test_null_broken_ring(void)
{
  g_autoptr(GError) error = NULL;
  const guint sizes[2] = { 16, 16 };
  NullProc *p;
  VhuFrontend *fe;
  VhuDriverQueue *q0;
  struct vring_desc *desc;
  struct vring_avail *avail;
  guint8 status = 0;
  int err = new_eventfd();
  guint64 v, one = 1;
  char resp[32];
  g_autofree char *dir = NULL, *log = NULL;

  if (null_backend_path() == NULL) {
    close(err);
    return;
  }
  dir = tu_make_tmpdir("vhu-backend-XXXXXX");
  log = g_build_filename(dir, "stderr.log", NULL);
  p = null_start_full(dir, NULL, log);
  fe = vhu_frontend_connect(p->path, &error);
  g_assert_no_error(error);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, 0, 1 << 20, &error));
  g_assert_true(vhu_frontend_start(fe, G_MAXUINT64, sizes, 2, &error));
  g_assert_no_error(error);
  v = 0;
  g_assert_true(vhu_frontend_request(fe, VHU_SET_VRING_ERR, &v, 8, &err, 1, &error));
  g_assert_no_error(error);

  /* Descriptor 0 points outside guest memory. */
  q0 = vhu_frontend_get_queue(fe, 0);
  desc = vhu_driver_queue_desc_table(q0);
  avail = vhu_driver_queue_avail(q0);
  desc[0] = (struct vring_desc){ .addr = 0x40000000, .len = 64, .flags = 0 };
  avail->ring[avail->idx % vhu_driver_queue_size(q0)] = 0;
  __atomic_store_n(&avail->idx, (guint16)(avail->idx + 1), __ATOMIC_RELEASE);
  v = 0;
  /* Kick through SET_VRING_KICK's fd is private to the library; ask the
   * backend to look with a fresh kick fd instead. */
  {
    int kick = new_eventfd();

    g_assert_true(vhu_frontend_request(fe, VHU_SET_VRING_KICK, &v, 8, &kick, 1, &error));
    g_assert_no_error(error);
    g_assert_cmpint(write(kick, &one, 8), ==, 8);
    g_assert_true(tu_wait_readable(err, TIMEOUT_MS));
    /* Kicked again: the broken ring stays quiet. */
    g_assert_cmpint(write(kick, &one, 8), ==, 8);
    g_assert_true(vhu_frontend_request(fe, VHU_SET_VRING_KICK, &v, 8, &kick, 1, &error));
    g_assert_no_error(error);
    close(kick);
  }
  g_assert_true(vhu_frontend_get_status(fe, &status, &error));
  g_assert_true(status & VHU_STATUS_NEEDS_RESET);
  g_assert_cmpint(
      vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 1), "q1", 3, resp, sizeof resp, &error),
      ==, 3);
  g_assert_no_error(error);
  g_assert_cmpstr(resp, ==, "q1");
  vhu_frontend_free(fe);
  close(err);
  null_stop(p, TRUE);
  /* The process is gone: its stderr is complete. */
  g_assert_cmpuint(file_count_lines(log, "null: queue 0 broken: descriptor 0: buffer 0x40000000+64 "
                                         "is not in guest memory; device needs reset"),
                   ==, 1);
  g_assert_cmpuint(file_count_lines(log, "broken"), ==, 1);
  g_unlink(log);
  g_rmdir(dir);
}

static void
test_null_once_and_fd(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocessLauncher) launcher = NULL;
  const char *args[] = { "--fd", "3", "--queues", "1", NULL };
  const guint sizes[1] = { 8 };
  GSubprocess *proc;
  VhuFrontend *fe;
  NullProc *p;
  char resp[16];
  int sv[2];

  if (null_backend_path() == NULL)
    return;
  /* --once: exits 0 after the first frontend. */
  {
    const char *once[] = { "--once", NULL };
    Raw *r;

    p = null_start(NULL, once);
    r = raw_connect(p->path);
    raw_init(r, G_MAXUINT64);
    raw_free(r);
    g_assert_cmpint(tu_wait_exit(p->proc, TIMEOUT_MS), ==, 0);
    g_assert_false(g_file_test(p->path, G_FILE_TEST_EXISTS));
    null_free(p, FALSE);
  }

  /* --fd: serves the inherited socket, exits 0 when it closes. */
  socketpair_or_die(sv);
  launcher = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDOUT_PIPE);
  g_subprocess_launcher_take_fd(launcher, sv[1], 3);
  proc = spawn_null(launcher, args);
  fe = vhu_frontend_new_from_fd(sv[0]);
  g_assert_true(vhu_frontend_init(fe, G_MAXUINT64, &error));
  g_assert_true(vhu_frontend_add_region(fe, 0, 1 << 20, &error));
  g_assert_true(vhu_frontend_start(fe, G_MAXUINT64, sizes, 1, &error));
  g_assert_no_error(error);
  g_assert_cmpint(
      vhu_driver_queue_transact(vhu_frontend_get_queue(fe, 0), "fd", 3, resp, sizeof resp, &error),
      ==, 3);
  g_assert_no_error(error);
  vhu_frontend_free(fe);
  g_assert_cmpint(tu_wait_exit(proc, TIMEOUT_MS), ==, 0);
  g_object_unref(proc);
}

/* Requests popped but never completed survive a kill -9 of the backend:
 * the restarted one resubmits them from the inflight buffer. */
static void
test_null_inflight_restart(void)
{
  const char *hold[] = { "--hold-queue", "1", NULL };
  VhuInflightMsg inf = { .num_queues = 2, .queue_size = RAW_QSIZE };
  g_autofree char *dir = NULL;
  NullProc *p;
  Raw *r;
  int inflight_fd = -1;
  guint16 heads[3];
  guint32 id, len;
  gboolean seen[3] = { FALSE };

  if (null_backend_path() == NULL)
    return;
  dir = tu_make_tmpdir("vhu-backend-XXXXXX");
  p = null_start(dir, hold);
  r = raw_connect(p->path);
  raw_init(r, G_MAXUINT64);
  raw_send(r, VHU_GET_INFLIGHT_FD, 0, &inf, sizeof inf, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_INFLIGHT_FD, &inf, sizeof inf, &inflight_fd), ==,
                   sizeof inf);
  g_assert_cmpint(inflight_fd, >=, 0);
  g_assert_cmpuint(raw_acked(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &inflight_fd, 1), ==, 0);
  raw_start_10(r, 2);
  for (guint i = 0; i < 3; i++) {
    g_autofree char *text = g_strdup_printf("held %u", i);

    heads[i] = raw_submit(r, 1, text, (guint32)strlen(text) + 1, 32);
  }
  raw_echo(r, 0, "queue 0 unaffected");
  /* The device took all three (and never completes them). */
  {
    guint total = 0;

    while (total < 3) {
      char buf[32];
      guint q;

      /* One line per batch: "held 1 N". */
      tu_read_line(p->proc, buf, sizeof buf, TIMEOUT_MS);
      g_assert_cmpint(sscanf(buf, "held %u %u", &q, &total), ==, 2);
      g_assert_cmpuint(q, ==, 1);
    }
    g_assert_cmpuint(total, ==, 3);
  }
  raw_disconnect(r);
  g_subprocess_force_exit(p->proc);
  g_assert_cmpint(tu_wait_exit(p->proc, TIMEOUT_MS), ==, -1);
  null_free(p, TRUE);

  /* Restart without --hold-queue; reconnect with the same guest memory and
   * inflight buffer.  The frontend (like QEMU) cannot know which requests
   * were popped: it restores last_avail from the used index. */
  p = null_start(dir, NULL);
  r->sock = connect_unix(p->path);
  raw_init(r, G_MAXUINT64);
  g_assert_cmpuint(raw_acked(r, VHU_SET_INFLIGHT_FD, &inf, sizeof inf, &inflight_fd, 1), ==, 0);
  {
    guint64 features = BIT(VHU_F_VERSION_1) | BIT(VHU_F_PROTOCOL_FEATURES);

    raw_request(r, VHU_SET_FEATURES, &features, 8, NULL, 0);
    raw_add_mem_regs(r);
    raw_start_queue(r, 0, __atomic_load_n(&r->q[0].used->idx, __ATOMIC_ACQUIRE), TRUE);
    raw_start_queue(r, 1, __atomic_load_n(&r->q[1].used->idx, __ATOMIC_ACQUIRE), TRUE);
  }
  g_assert_true(raw_wait_used(r, 1, 3, TIMEOUT_MS));
  for (guint i = 0; i < 3; i++) {
    raw_get_used(r, 1, &id, &len);
    for (guint j = 0; j < 3; j++) {
      if (id == heads[j]) {
        g_autofree char *text = g_strdup_printf("held %u", j);

        g_assert_false(seen[j]);
        seen[j] = TRUE;
        g_assert_cmpuint(len, ==, strlen(text) + 1);
        g_assert_cmpstr((const char *)raw_in_buf(r, 1, heads[j]), ==, text);
      }
    }
  }
  g_assert_true(seen[0] && seen[1] && seen[2]);
  /* Nothing completed twice; new requests still flow. */
  raw_echo(r, 1, "after recovery");
  close(inflight_fd);
  raw_free(r);
  null_stop(p, FALSE);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  harness_init();

  g_test_add_func("/msg/roundtrip", test_msg_roundtrip);
  g_test_add_func("/msg/hostile", test_msg_hostile);
  g_test_add_func("/msg/closed-peer", test_msg_closed_peer);
  g_test_add_func("/msg/request-names", test_request_names);

  g_test_add_func("/backend/handshake", test_backend_handshake);
  g_test_add_data_func("/backend/qemu72-start", GINT_TO_POINTER(TRUE), test_backend_start);
  g_test_add_data_func("/backend/qemu10-start", GINT_TO_POINTER(FALSE), test_backend_start);
  g_test_add_func("/backend/no-protocol-features", test_backend_no_protocol_features);
  g_test_add_func("/backend/kick-api", test_backend_kick_api);
  g_test_add_func("/backend/kick-wakeups", test_backend_kick_wakeups);
  g_test_add_func("/backend/reset-device", test_backend_reset_device);
  g_test_add_func("/backend/backlog", test_backend_backlog);
  g_test_add_func("/backend/single-client", test_backend_single_client);
  g_test_add_func("/backend/serve-fd", test_backend_serve_fd);
  g_test_add_func("/backend/socket-file", test_backend_socket_file);
  g_test_add_func("/backend/broken-ring", test_backend_broken_ring);
  g_test_add_func("/backend/broken-ring-outside-kick", test_backend_broken_ring_outside_kick);
  g_test_add_func("/backend/device-needs-reset", test_backend_device_needs_reset);
  g_test_add_data_func("/backend/hostile/unknown-id", hostile_unknown_id, test_hostile);
  g_test_add_data_func("/backend/hostile/wrong-size", hostile_wrong_size, test_hostile);
  g_test_add_data_func("/backend/hostile/getter-size", hostile_getter_size, test_hostile);
  g_test_add_data_func("/backend/hostile/getter-index", hostile_getter_index, test_hostile);
  g_test_add_data_func("/backend/hostile/mem-table", hostile_mem_table, test_hostile);
  g_test_add_data_func("/backend/hostile/rings", hostile_rings, test_hostile);
  g_test_add_data_func("/backend/hostile/fds", hostile_fds, test_hostile);
  g_test_add_data_func("/backend/hostile/too-many-fds", hostile_too_many_fds, test_hostile);
  g_test_add_data_func("/backend/hostile/header-only", hostile_header_only, test_hostile_noinit);
  g_test_add_data_func("/backend/hostile/stall", hostile_stall, test_hostile);
  g_test_add_data_func("/backend/hostile/mid-message", hostile_mid_message, test_hostile);
  g_test_add_data_func("/backend/hostile/oversized", hostile_oversized, test_hostile_noinit);
  g_test_add_data_func("/backend/hostile/bad-version", hostile_bad_version, test_hostile_noinit);
  g_test_add_data_func("/backend/hostile/config", hostile_config, test_hostile);
  g_test_add_data_func("/backend/hostile/features", hostile_features, test_hostile);
  g_test_add_data_func("/backend/hostile/inflight", hostile_inflight, test_hostile);
  g_test_add_data_func("/backend/hostile/running-then-garbage", hostile_running_then_garbage,
                       test_hostile);
  g_test_add_data_func("/backend/hostile/started-ring", hostile_started_ring, test_hostile);

  g_test_add_func("/null/frontend", test_null_frontend);
  g_test_add_func("/null/hostile-then-fresh", test_null_hostile_then_fresh);
  g_test_add_func("/null/broken-ring", test_null_broken_ring);
  g_test_add_func("/null/once-and-fd", test_null_once_and_fd);
  g_test_add_func("/null/inflight-restart", test_null_inflight_restart);

  return g_test_run();
}
