/* backend-harness.h: what the vhost/ backend tests share: a raw frontend
 * written by hand (guest memory in one memfd exposed as two regions, split
 * rings), an in-process echo backend on its own control thread, log
 * capture and fd counting. */
#pragma once

#include <glib.h>
#include <linux/virtio_ring.h>

#include "vhu-backend-private.h"
#include "vhu-frontend.h"
#include "vhu-msg.h"
#include "test-util.h"

#define TIMEOUT_MS    5000
#define BIT(n)        (G_GUINT64_CONSTANT(1) << (n))
#define RAW_MEM_SIZE  0x200000u
#define RAW_UVA_BASE  G_GUINT64_CONSTANT(0x7f1200000000)
#define RAW_QSIZE     16u
#define RAW_MAX_Q     4u
#define RAW_SLOT_SIZE 0x400u /* per descriptor buffer */

typedef struct {
  guint num;
  guint64 desc_gpa, avail_gpa, used_gpa, buf_gpa;
  struct vring_desc *desc;
  struct vring_avail *avail;
  struct vring_used *used;
  int kick, call, err;
  guint16 avail_idx, last_used;
} RawQueue;

typedef struct {
  int sock;
  int memfd;
  guint8 *mem;
  guint64 protocol;
  guint nq;
  RawQueue q[RAW_MAX_Q];
} Raw;

typedef struct {
  VhuBackend *backend;
  GMainContext *ctx;
  GMainLoop *loop;
  GThread *thread;
  char *dir;
  char *path;
  GMutex lock;
  GCond cond;
  guint disconnects;
  guint resets;
  guint kicks;
  int device_fd; /* kept from request 33 */
  guint8 config[16];
} Server;

extern const VhuMemRegionDesc raw_regions[2];
/* Lines logged in the "vhost" domain, captured by capture_log (installed by
 * harness_init). */
extern GPtrArray *log_lines;

/* Call first in main(): log capture, SIGPIPE ignored. */
void harness_init(void);
void dump_fds(void);
int count_fds(void);
int new_eventfd(void);
guint log_mark(void);
guint log_count_since(guint mark, const char *needle);
void socketpair_or_die(int sv[2]);
void send_owner_with_fds(int sock, guint n);
int connect_unix(const char *path);
void raw_layout_queue(Raw *r, guint i, guint num);
Raw *raw_new(void);
Raw *raw_connect(const char *path);
void raw_close_queue_fds(Raw *r);
void raw_disconnect(Raw *r);
void raw_free(Raw *r);
void raw_send(Raw *r, guint32 req, guint32 flags, const void *payload, gsize size, const int *fds,
              guint n_fds);
gsize raw_recv(Raw *r, guint32 req, void *payload, gsize size, int *fd);
guint64 raw_get_u64(Raw *r, guint32 req);
guint64 raw_recv_ack(Raw *r, guint32 req);
void raw_u64_acked_ok(Raw *r, guint32 req, guint64 v);
guint64 raw_acked(Raw *r, guint32 req, const void *payload, gsize size, const int *fds,
                  guint n_fds);
gboolean raw_closed(Raw *r, int timeout_ms);
void raw_init(Raw *r, guint64 mask);
gboolean raw_ack_on(Raw *r);
void raw_request(Raw *r, guint32 req, const void *payload, gsize size, const int *fds, guint n_fds);
void raw_set_mem_table(Raw *r);
void raw_add_mem_regs(Raw *r);
guint64 raw_uva(guint64 gpa);
void raw_vring_fd(Raw *r, guint32 req, guint i, int fd);
void raw_start_queue(Raw *r, guint i, guint base, gboolean enable_need_reply);
void raw_clear_rings(Raw *r);
/* QEMU 7.2's start: SET_MEM_TABLE, enable fire-and-forget. */
void raw_start_72(Raw *r, guint nq);
/* QEMU 10's: ADD_MEM_REG (unless @send_mem is FALSE), synchronous enable,
 * DRIVER_OK. */
void raw_start_10_full(Raw *r, guint nq, gboolean send_mem);
void raw_start_10(Raw *r, guint nq);
guint16 raw_submit(Raw *r, guint i, const void *out, guint32 out_len, guint32 in_len);
const guint8 *raw_in_buf(Raw *r, guint i, guint16 head);
gboolean raw_wait_used(Raw *r, guint i, guint n, int timeout_ms);
void raw_get_used(Raw *r, guint i, guint32 *id, guint32 *len);
void raw_echo(Raw *r, guint i, const char *text);
Server *server_new_full(guint num_queues, const VhuBackendOptions *options, gboolean listen);
void server_run(Server *s);
Server *server_new(guint num_queues);
void server_free(Server *s);
void server_wait_disconnects(Server *s, guint n);
void context_barrier(GMainContext *ctx);
void server_check_recovered(Server *s, guint disconnects, int fds_before);
