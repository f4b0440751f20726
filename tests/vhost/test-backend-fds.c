/* test-backend-fds: the fds a frontend hands over, and the notifications a
 * backend owes the driver and the frontend.
 *
 * A VhuBackend in this process with the echo device of backend-harness,
 * driven by the raw frontend over a real socket.
 *
 * - /fds/...: kick, call and error fds must be eventfds (a pipe as call fd
 *   used to block the queue thread once full, then kill the process with
 *   SIGPIPE; /dev/zero as kick fd spins a poller for ever); the backend
 *   channel must be a stream socket.  Refused with an error ack and one log
 *   line, closed, and the session goes on.
 * - /notify/...: a call fd installed after completions is signalled; a ring
 *   started without a kick fd is polled; NEEDS_RESET reaches the frontend as
 *   BACKEND_CONFIG_CHANGE_MSG.
 * - /mem/...: a refused SET_MEM_TABLE leaves the current table in place. */
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend-harness.h"

typedef enum {
  FD_PIPE_READ,
  FD_PIPE_WRITE,
  FD_DEV_ZERO,
  FD_MEMFD,
  FD_SOCKET,
} FdKind;

static const char *const kind_names[]
    = { "pipe-read", "pipe-write", "dev-zero", "memfd", "socket" };

/* An fd of @kind; *@extra is the other end, if any (-1 otherwise). */
static int
make_fd(FdKind kind, int *extra)
{
  int p[2], fd = -1;

  *extra = -1;
  switch (kind) {
    case FD_PIPE_READ:
    case FD_PIPE_WRITE:
      g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
      fd = kind == FD_PIPE_READ ? p[0] : p[1];
      *extra = kind == FD_PIPE_READ ? p[1] : p[0];
      break;
    case FD_DEV_ZERO:
      fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
      break;
    case FD_MEMFD:
      fd = memfd_create("not-an-eventfd", MFD_CLOEXEC);
      break;
    case FD_SOCKET:
      socketpair_or_die(p);
      fd = p[0];
      *extra = p[1];
      break;
  }
  g_assert_cmpint(fd, >=, 0);
  return fd;
}

static void
send_vring_fd_nack(Raw *r, guint32 req, guint qidx, int fd)
{
  guint64 v = qidx;
  guint mark = log_mark();

  g_assert_cmpuint(raw_acked(r, req, &v, sizeof v, &fd, 1), ==, 1);
  g_assert_cmpuint(log_count_since(mark, "not an eventfd"), ==, 1);
  g_assert_cmpuint(log_count_since(mark, vhu_request_name(req)), ==, 1);
}

/* Every request taking a ring fd refuses every kind of fd but an eventfd,
 * closes it, and the session keeps working with proper eventfds. */
static void
test_fds_wrong_kind(void)
{
  static const guint32 reqs[] = { VHU_SET_VRING_KICK, VHU_SET_VRING_CALL, VHU_SET_VRING_ERR };
  Server *s = server_new(2);
  int fds_before = count_fds();
  Raw *r = raw_connect(s->path);

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "before");
  for (guint k = 0; k < G_N_ELEMENTS(kind_names); k++) {
    for (guint i = 0; i < G_N_ELEMENTS(reqs); i++) {
      int before = count_fds();
      int extra, fd = make_fd(k, &extra);

      g_test_message("%s as %s", kind_names[k], vhu_request_name(reqs[i]));
      send_vring_fd_nack(r, reqs[i], 1, fd);
      close(fd);
      if (extra >= 0)
        close(extra);
      /* The backend kept nothing of it. */
      context_barrier(vhu_backend_get_queue_context(s->backend));
      g_assert_cmpint(count_fds(), ==, before);
    }
  }
  /* The refused fds replaced nothing: both queues still echo. */
  raw_echo(r, 0, "after, queue 0");
  raw_echo(r, 1, "after, queue 1");
  raw_free(r);
  server_check_recovered(s, 1, fds_before);
  server_free(s);
}

/* A pipe nobody reads as call fd used to fill up and block the queue thread
 * for good (and GET_VRING_BASE with it).  Now it is refused, and a queue
 * that completes many requests with a real call fd never blocks either. */
static void
test_fds_pipe_call_never_blocks(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  VhuVringState st = { .index = 0 };
  int extra, fd = make_fd(FD_PIPE_WRITE, &extra);
  guint32 id, len;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  send_vring_fd_nack(r, VHU_SET_VRING_CALL, 0, fd);
  close(fd);
  close(extra); /* the reader goes: a write into the pipe would raise SIGPIPE */
  /* Far more completions than a pipe or an unread eventfd could buffer
   * notifications for, none of them read by us until the end. */
  for (guint i = 0; i < 4096; i++) {
    raw_submit(r, 0, "x", 2, 16);
    if ((i + 1) % (RAW_QSIZE / 2) == 0) {
      g_assert_true(raw_wait_used(r, 0, RAW_QSIZE / 2, TIMEOUT_MS));
      for (guint j = 0; j < RAW_QSIZE / 2; j++)
        raw_get_used(r, 0, &id, &len);
    }
  }
  /* The control path answers. */
  raw_send(r, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_VRING_BASE, &st, sizeof st, NULL), ==, sizeof st);
  g_assert_cmpuint(st.num, ==, 4096 % 65536);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

static void
test_fds_backend_channel_kind(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  int fd = new_eventfd();
  guint mark;

  raw_init(r, G_MAXUINT64);
  mark = log_mark();
  g_assert_cmpuint(raw_acked(r, VHU_SET_BACKEND_REQ_FD, NULL, 0, &fd, 1), ==, 1);
  g_assert_cmpuint(log_count_since(mark, "not a stream socket"), ==, 1);
  close(fd);
  raw_start_10(r, 2);
  raw_echo(r, 0, "still serving");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* Waits until the queue thread handled what was kicked before. */
static void
queue_barrier(Server *s)
{
  context_barrier(vhu_backend_get_queue_context(s->backend));
}

static gboolean
readable_now(int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };

  return poll(&p, 1, 0) == 1;
}

/* Completions made while no call fd was set: the call fd installed next is
 * signalled at once (libvhost-user does the same); one installed with
 * nothing pending is not. */
static void
test_notify_late_call_fd(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  RawQueue *q = &r->q[0];
  guint64 v;
  int call;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_vring_fd(r, VHU_SET_VRING_CALL, 0, -1);
  raw_submit(r, 0, "while no call fd", 17, 64);
  queue_barrier(s);
  g_assert_cmpuint(__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE), ==, q->last_used + 1);

  call = new_eventfd();
  raw_vring_fd(r, VHU_SET_VRING_CALL, 0, call);
  g_assert_true(tu_wait_readable(call, TIMEOUT_MS));
  g_assert_cmpint(read(call, &v, sizeof v), ==, sizeof v);
  q->last_used++;

  /* Nothing pending now: a replacement call fd stays quiet... */
  raw_vring_fd(r, VHU_SET_VRING_CALL, 0, -1);
  close(call);
  call = new_eventfd();
  raw_vring_fd(r, VHU_SET_VRING_CALL, 0, call);
  queue_barrier(s);
  g_assert_false(readable_now(call));
  /* ...and is signalled for the next completion. */
  close(q->call);
  q->call = call;
  raw_echo(r, 0, "with the new call fd");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* SET_VRING_KICK with the no-fd flag: the backend polls the ring. */
static void
test_notify_nofd_kick_polls(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  RawQueue *q = &r->q[0];
  VhuVringState st = { .index = 0 };
  VhuVringState en = { .index = 0, .num = 1 };

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "kicked");
  raw_send(r, VHU_GET_VRING_BASE, 0, &st, sizeof st, NULL, 0);
  g_assert_cmpuint(raw_recv(r, VHU_GET_VRING_BASE, &st, sizeof st, NULL), ==, sizeof st);
  g_assert_cmpuint(st.num, ==, 1);
  raw_vring_fd(r, VHU_SET_VRING_KICK, 0, -1);
  raw_request(r, VHU_SET_VRING_ENABLE, &en, sizeof en, NULL, 0);
  close(q->kick);
  q->kick = -1; /* raw_submit publishes without kicking */
  for (guint i = 0; i < 3; i++)
    raw_echo(r, 0, "polled, never kicked");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* A backend channel the test reads: SET_BACKEND_REQ_FD with one end. */
static int
open_backend_channel(Raw *r)
{
  int sv[2];

  socketpair_or_die(sv);
  raw_request(r, VHU_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1);
  close(sv[1]);
  return sv[0];
}

static void
expect_config_change(int channel)
{
  VhuMsgHeader hdr;

  g_assert_true(tu_wait_readable(channel, TIMEOUT_MS));
  g_assert_cmpint(recv(channel, &hdr, sizeof hdr, MSG_DONTWAIT), ==, sizeof hdr);
  g_assert_cmpuint(hdr.request, ==, VHU_BACKEND_CONFIG_CHANGE_MSG);
  g_assert_cmphex(hdr.flags, ==, VHU_VERSION); /* no NEED_REPLY: nobody waits */
  g_assert_cmpuint(hdr.size, ==, 0);
}

/* NEEDS_RESET, whether a ring broke or the device asked for it, reaches
 * the frontend over the backend channel, once per occurrence. */
static void
test_notify_needs_reset_config_change(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  RawQueue *q = &r->q[0];
  guint64 one = 1;
  int channel;

  raw_init(r, G_MAXUINT64);
  channel = open_backend_channel(r);
  raw_start_10(r, 2);
  raw_echo(r, 0, "healthy");
  g_assert_false(readable_now(channel));

  /* The guest breaks queue 0 (the avail index jumps past the ring). */
  q->avail_idx += RAW_QSIZE + 1;
  __atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
  g_assert_cmpint(write(q->kick, &one, 8), ==, 8);
  expect_config_change(channel);
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS) & VHU_STATUS_NEEDS_RESET, ==,
                  VHU_STATUS_NEEDS_RESET);

  /* The device finds a request unusable (the echo device's hook). */
  raw_u64_acked_ok(r, VHU_SET_STATUS, 0);
  raw_submit(r, 1, "RESET!", 7, 64);
  expect_config_change(channel);
  g_assert_false(readable_now(channel));
  close(channel);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* Without BACKEND_REQ negotiated nothing is written to a channel the
 * frontend may have handed over anyway. */
static void
test_notify_no_backend_req(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  int sv[2];

  raw_init(r, ~BIT(VHU_PF_BACKEND_REQ));
  socketpair_or_die(sv);
  raw_request(r, VHU_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1);
  close(sv[1]);
  raw_start_10(r, 2);
  raw_submit(r, 1, "RESET!", 7, 64);
  g_assert_true(raw_wait_used(r, 1, 1, TIMEOUT_MS));
  g_assert_cmphex(raw_get_u64(r, VHU_GET_STATUS) & VHU_STATUS_NEEDS_RESET, ==,
                  VHU_STATUS_NEEDS_RESET);
  g_assert_false(readable_now(sv[0]));
  close(sv[0]);
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

/* A SET_MEM_TABLE that would unmap a started ring is refused and changes
 * nothing: the rings keep working on the table they had. */
static void
test_mem_refused_table_kept(void)
{
  Server *s = server_new(2);
  Raw *r = raw_connect(s->path);
  struct {
    guint32 nregions, padding;
    VhuMemRegionDesc regions[1];
  } __attribute__((packed)) table = { .nregions = 1 };
  guint mark;

  raw_init(r, G_MAXUINT64);
  raw_start_10(r, 2);
  raw_echo(r, 0, "before");
  /* Only the high region: the rings (below 0xc0000) are no longer in it. */
  table.regions[0] = raw_regions[1];
  mark = log_mark();
  g_assert_cmpuint(raw_acked(r, VHU_SET_MEM_TABLE, &table, sizeof table, &r->memfd, 1), ==, 1);
  g_assert_cmpuint(log_count_since(mark, "would no longer be mapped"), ==, 1);
  raw_echo(r, 0, "after, queue 0");
  raw_echo(r, 1, "after, queue 1");
  raw_free(r);
  server_wait_disconnects(s, 1);
  server_free(s);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  harness_init();
  g_test_add_func("/fds/wrong-kind", test_fds_wrong_kind);
  g_test_add_func("/fds/pipe-call-never-blocks", test_fds_pipe_call_never_blocks);
  g_test_add_func("/fds/backend-channel-kind", test_fds_backend_channel_kind);
  g_test_add_func("/notify/late-call-fd", test_notify_late_call_fd);
  g_test_add_func("/notify/nofd-kick-polls", test_notify_nofd_kick_polls);
  g_test_add_func("/notify/needs-reset-config-change", test_notify_needs_reset_config_change);
  g_test_add_func("/notify/no-backend-req", test_notify_no_backend_req);
  g_test_add_func("/mem/refused-table-kept", test_mem_refused_table_kept);
  return g_test_run();
}
