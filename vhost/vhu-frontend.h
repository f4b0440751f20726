/* vhu-frontend.h: the frontend (VMM) side of vhost-user.
 *
 * What QEMU does for a backend, for tools, tests and benchmarks: guest memory
 * in memfd regions, driver-side split rings, feature negotiation and the
 * start/stop sequence QEMU 10 sends.  Synchronous and single-threaded: every
 * reply is awaited with a timeout, never forever. */
#pragma once

#include <glib.h>
#include <sys/uio.h>

#include "vhu-proto.h"

G_BEGIN_DECLS

typedef struct _VhuFrontend VhuFrontend;
typedef struct _VhuDriverQueue VhuDriverQueue;

#define VHU_FRONTEND_DEFAULT_TIMEOUT_MS 5000
/* Protocol features the frontend implements (what init may negotiate):
 * MQ, REPLY_ACK, BACKEND_REQ, CONFIG, BACKEND_SEND_FD, RESET_DEVICE,
 * CONFIGURE_MEM_SLOTS, STATUS. */
#define VHU_FRONTEND_PROTOCOL_FEATURES                                                             \
  ((1ull << VHU_PF_MQ) | (1ull << VHU_PF_REPLY_ACK) | (1ull << VHU_PF_BACKEND_REQ)                 \
   | (1ull << VHU_PF_CONFIG) | (1ull << VHU_PF_BACKEND_SEND_FD) | (1ull << VHU_PF_RESET_DEVICE)    \
   | (1ull << VHU_PF_CONFIGURE_MEM_SLOTS) | (1ull << VHU_PF_STATUS))

/* A guest-physical buffer handed to a ring. */
typedef struct {
  guint64 gpa;
  guint32 len;
} VhuGuestBuf;

VhuFrontend *vhu_frontend_connect(const char *path, GError **error);
/* Connects to a backend that may not listen yet (one just spawned): while
 * the socket is missing or refuses connections, retries every 2 ms for up
 * to @timeout_ms, and gives up early once @alive (optional) returns FALSE,
 * e.g. because the backend process exited.  Other errors fail at once.  On
 * failure @error is the last connect error. */
VhuFrontend *vhu_frontend_connect_wait(const char *path, guint timeout_ms,
                                       gboolean (*alive)(gpointer data), gpointer data,
                                       GError **error);
/* Takes ownership of a connected socket @fd. */
VhuFrontend *vhu_frontend_new_from_fd(int fd);
void vhu_frontend_free(VhuFrontend *fe);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VhuFrontend, vhu_frontend_free)
void vhu_frontend_set_timeout(VhuFrontend *fe, guint timeout_ms);
int vhu_frontend_get_fd(VhuFrontend *fe);

/* Raw messages. @flags' version bits are added; fds are not consumed. */
gboolean vhu_frontend_send(VhuFrontend *fe, guint32 request, guint32 flags, const void *payload,
                           gsize size, const int *fds, guint n_fds, GError **error);
/* Waits for the reply to @request: checks flags == 0x5 and the id; copies at
 * most *size bytes and sets *size to the payload size.  Received fds are
 * stored in @fds (up to *n_fds; *n_fds set) and owned by the caller. */
gboolean vhu_frontend_recv_reply(VhuFrontend *fe, guint32 request, void *payload, gsize *size,
                                 int *fds, guint *n_fds, GError **error);
/* Request with a u64 answer (GET_FEATURES, GET_QUEUE_NUM, ...). */
gboolean vhu_frontend_get_u64(VhuFrontend *fe, guint32 request, guint64 *value, GError **error);
/* Request with a u64 payload; with REPLY_ACK negotiated, waits for the ack and
 * fails if it is non-zero. */
gboolean vhu_frontend_set_u64(VhuFrontend *fe, guint32 request, guint64 value, GError **error);
/* Any request: sends with NEED_REPLY when REPLY_ACK is negotiated and checks
 * the ack. */
gboolean vhu_frontend_request(VhuFrontend *fe, guint32 request, const void *payload, gsize size,
                              const int *fds, guint n_fds, GError **error);

/* GET_FEATURES, GET/SET_PROTOCOL_FEATURES (offered & @protocol_mask),
 * GET_QUEUE_NUM (if MQ), GET_MAX_MEM_SLOTS (if CONFIGURE_MEM_SLOTS),
 * SET_BACKEND_REQ_FD (if BACKEND_REQ), SET_OWNER: what QEMU does at realize. */
gboolean vhu_frontend_init(VhuFrontend *fe, guint64 protocol_mask, GError **error);
guint64 vhu_frontend_get_backend_features(VhuFrontend *fe);
guint64 vhu_frontend_get_protocol_features(VhuFrontend *fe); /* negotiated */
guint vhu_frontend_get_num_queues(VhuFrontend *fe);
/* What the backend offered in GET_PROTOCOL_FEATURES (before masking). */
guint64 vhu_frontend_get_backend_protocol_features(VhuFrontend *fe);
/* GET_MAX_MEM_SLOTS answer; 0 when CONFIGURE_MEM_SLOTS was not negotiated. */
guint64 vhu_frontend_get_max_mem_slots(VhuFrontend *fe);
gboolean vhu_frontend_has_protocol_feature(VhuFrontend *fe, guint bit);
gboolean vhu_frontend_get_config(VhuFrontend *fe, guint32 offset, void *buf, guint32 size,
                                 GError **error);
gboolean vhu_frontend_get_status(VhuFrontend *fe, guint8 *status, GError **error);

/* Guest memory: adds a memfd region of @size bytes at @gpa.  Regions are
 * sent to the backend at start (SET_MEM_TABLE, or ADD_MEM_REG when
 * CONFIGURE_MEM_SLOTS was negotiated), or at once if already started. */
gboolean vhu_frontend_add_region(VhuFrontend *fe, guint64 gpa, gsize size, GError **error);
/* Same, but the region starts @mmap_offset bytes into its memfd (as QEMU's
 * regions above the VGA hole do): the backend must map size + offset. */
gboolean vhu_frontend_add_region_offset(VhuFrontend *fe, guint64 gpa, gsize size, gsize mmap_offset,
                                        GError **error);
/* Regions added from now on are sealed against shrinking and growing
 * (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, as QEMU's memfd backend seals
 * guest RAM by default), so a backend may export their pages (udmabuf);
 * default off: unsealed memfds, which can be truncated under the backend. */
void vhu_frontend_set_seal_memory(VhuFrontend *fe, gboolean seal);
/* Host pointer for [gpa, gpa+len), which must lie in one region; NULL if not. */
void *vhu_frontend_gpa_to_ptr(VhuFrontend *fe, guint64 gpa, gsize len);
/* The memfd of the region holding @gpa (still owned by @fe), or -1: for
 * playing a frontend that shrinks guest memory under the backend. */
int vhu_frontend_get_region_fd(VhuFrontend *fe, guint64 gpa);
/* Bump allocator over the regions (never crosses one).  Returns the gpa, or
 * G_MAXUINT64 when no region has room.  vhu_frontend_reset_alloc starts over. */
guint64 vhu_frontend_alloc(VhuFrontend *fe, gsize size, gsize align);
void vhu_frontend_reset_alloc(VhuFrontend *fe);

/* The QEMU 10 start sequence (SET_FEATURES, GET/SET_STATUS, memory, then per
 * queue SET_VRING_NUM/BASE/ADDR/KICK/ENABLE/CALL, DRIVER_OK) for @n_queues
 * queues of the given sizes.  Rings are allocated in guest memory.
 * @driver_features: the virtio features the "guest" acks (ANDed with the
 * backend's offer; VERSION_1 and PROTOCOL_FEATURES always kept). */
gboolean vhu_frontend_start(VhuFrontend *fe, guint64 driver_features, const guint *queue_sizes,
                            guint n_queues, GError **error);
/* SET_VRING_ENABLE(0) + GET_VRING_BASE per queue, as QEMU does on stop. */
gboolean vhu_frontend_stop(VhuFrontend *fe, GError **error);
guint64 vhu_frontend_get_driver_features(VhuFrontend *fe);

VhuDriverQueue *vhu_frontend_get_queue(VhuFrontend *fe, guint idx);

/* Adds a chain (device-readable @out then device-writable @in buffers),
 * direct descriptors, or one indirect table when @indirect.  Returns the head
 * id, or -1 when the ring has no room. @token comes back from get_used. */
int vhu_driver_queue_add(VhuDriverQueue *q, const VhuGuestBuf *out, guint n_out,
                         const VhuGuestBuf *in, guint n_in, gboolean indirect, gpointer token);
/* Publishes added chains (avail idx) and kicks unless the device asked not to. */
void vhu_driver_queue_kick(VhuDriverQueue *q);
/* Next used element, or FALSE if none: *token and *len set. */
gboolean vhu_driver_queue_get_used(VhuDriverQueue *q, gpointer *token, guint32 *len);
/* Waits for the call eventfd (or a used entry) up to @timeout_ms. */
gboolean vhu_driver_queue_wait(VhuDriverQueue *q, int timeout_ms);
guint vhu_driver_queue_num_free(VhuDriverQueue *q);
/* Raw ring access for hostile tests. */
void *vhu_driver_queue_desc_table(VhuDriverQueue *q);
void *vhu_driver_queue_avail(VhuDriverQueue *q);
void *vhu_driver_queue_used(VhuDriverQueue *q);
guint vhu_driver_queue_size(VhuDriverQueue *q);

/* One request/response round trip: copies @req into guest memory, adds a
 * readable buffer for it and a writable one of @resp_size, kicks, waits.
 * Returns the number of bytes the device wrote, or -1 with @error. */
gssize vhu_driver_queue_transact(VhuDriverQueue *q, const void *req, gsize req_size, void *resp,
                                 gsize resp_size, GError **error);

G_END_DECLS
