/* vhu-proto.h: vhost-user wire format (ids, flags, payload layouts).
 *
 * Shared by the backend and frontend sides.  All fields are host byte order
 * (little-endian on the hosts we support).  Layouts follow
 * docs/vhost-user-subset.md. */
#pragma once

#include <stdint.h>

#define VHU_HDR_SIZE          12u
#define VHU_VERSION           0x1u
#define VHU_FLAG_VERSION      0x3u
#define VHU_FLAG_REPLY        0x4u
#define VHU_FLAG_NEED_REPLY   0x8u
#define VHU_REPLY_FLAGS       (VHU_FLAG_REPLY | VHU_VERSION) /* exactly 0x5 */
#define VHU_MAX_FDS           8u
#define VHU_MAX_PAYLOAD       4096u /* larger than every message we accept */
#define VHU_MAX_CONFIG_SIZE   256u
#define VHU_MAX_MEM_SLOTS     32u /* answered to GET_MAX_MEM_SLOTS */
#define VHU_MAX_TABLE_REGIONS 8u  /* SET_MEM_TABLE limit */
#define VHU_MAX_QUEUE_SIZE    1024u

/* Virtio feature bits the transport cares about. */
#define VHU_F_NOTIFY_ON_EMPTY    24
#define VHU_F_ANY_LAYOUT         27
#define VHU_F_RING_INDIRECT_DESC 28
#define VHU_F_RING_EVENT_IDX     29
#define VHU_F_PROTOCOL_FEATURES  30
#define VHU_F_VERSION_1          32
#define VHU_F_ACCESS_PLATFORM    33
#define VHU_F_RING_PACKED        34

/* Protocol feature bits. */
typedef enum {
  VHU_PF_MQ = 0,
  VHU_PF_LOG_SHMFD = 1,
  VHU_PF_RARP = 2,
  VHU_PF_REPLY_ACK = 3,
  VHU_PF_NET_MTU = 4,
  VHU_PF_BACKEND_REQ = 5,
  VHU_PF_CROSS_ENDIAN = 6,
  VHU_PF_CRYPTO_SESSION = 7,
  VHU_PF_PAGEFAULT = 8,
  VHU_PF_CONFIG = 9,
  VHU_PF_BACKEND_SEND_FD = 10,
  VHU_PF_HOST_NOTIFIER = 11,
  VHU_PF_INFLIGHT_SHMFD = 12,
  VHU_PF_RESET_DEVICE = 13,
  VHU_PF_INBAND_NOTIFICATIONS = 14,
  VHU_PF_CONFIGURE_MEM_SLOTS = 15,
  VHU_PF_STATUS = 16,
  VHU_PF_XEN_MMAP = 17,
  VHU_PF_SHARED_OBJECT = 18,
  VHU_PF_DEVICE_STATE = 19,
} VhuProtocolFeature;

/* Front-end -> back-end requests. */
typedef enum {
  VHU_NONE = 0,
  VHU_GET_FEATURES = 1,
  VHU_SET_FEATURES = 2,
  VHU_SET_OWNER = 3,
  VHU_RESET_OWNER = 4,
  VHU_SET_MEM_TABLE = 5,
  VHU_SET_LOG_BASE = 6,
  VHU_SET_LOG_FD = 7,
  VHU_SET_VRING_NUM = 8,
  VHU_SET_VRING_ADDR = 9,
  VHU_SET_VRING_BASE = 10,
  VHU_GET_VRING_BASE = 11,
  VHU_SET_VRING_KICK = 12,
  VHU_SET_VRING_CALL = 13,
  VHU_SET_VRING_ERR = 14,
  VHU_GET_PROTOCOL_FEATURES = 15,
  VHU_SET_PROTOCOL_FEATURES = 16,
  VHU_GET_QUEUE_NUM = 17,
  VHU_SET_VRING_ENABLE = 18,
  VHU_SEND_RARP = 19,
  VHU_NET_SET_MTU = 20,
  VHU_SET_BACKEND_REQ_FD = 21,
  VHU_IOTLB_MSG = 22,
  VHU_SET_VRING_ENDIAN = 23,
  VHU_GET_CONFIG = 24,
  VHU_SET_CONFIG = 25,
  VHU_CREATE_CRYPTO_SESSION = 26,
  VHU_CLOSE_CRYPTO_SESSION = 27,
  VHU_POSTCOPY_ADVISE = 28,
  VHU_POSTCOPY_LISTEN = 29,
  VHU_POSTCOPY_END = 30,
  VHU_GET_INFLIGHT_FD = 31,
  VHU_SET_INFLIGHT_FD = 32,
  VHU_GPU_SET_SOCKET = 33,
  VHU_RESET_DEVICE = 34,
  VHU_VRING_KICK = 35,
  VHU_GET_MAX_MEM_SLOTS = 36,
  VHU_ADD_MEM_REG = 37,
  VHU_REM_MEM_REG = 38,
  VHU_SET_STATUS = 39,
  VHU_GET_STATUS = 40,
  VHU_REQUEST_MAX = 44,
} VhuRequest;

/* Back-end -> front-end requests (SET_BACKEND_REQ_FD channel). */
typedef enum {
  VHU_BACKEND_IOTLB_MSG = 1,
  VHU_BACKEND_CONFIG_CHANGE_MSG = 2,
} VhuBackendRequest;

typedef struct __attribute__((packed)) {
  uint32_t request;
  uint32_t flags;
  uint32_t size;
} VhuMsgHeader;

typedef struct __attribute__((packed)) {
  uint32_t index;
  uint32_t num;
} VhuVringState;

#define VHU_VRING_F_LOG 0x1u
typedef struct __attribute__((packed)) {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
} VhuVringAddr;

typedef struct __attribute__((packed)) {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
} VhuMemRegionDesc;

typedef struct __attribute__((packed)) {
  uint32_t nregions;
  uint32_t padding;
  VhuMemRegionDesc regions[VHU_MAX_TABLE_REGIONS];
} VhuMemTableDesc;

typedef struct __attribute__((packed)) {
  uint64_t padding;
  VhuMemRegionDesc region;
} VhuMemSingleRegion;

#define VHU_CONFIG_HDR_SIZE 12u
typedef struct __attribute__((packed)) {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
  uint8_t region[VHU_MAX_CONFIG_SIZE];
} VhuConfigMsg;

typedef struct __attribute__((packed)) {
  uint64_t mmap_size;
  uint64_t mmap_offset;
  uint16_t num_queues;
  uint16_t queue_size;
  uint16_t padding[2];
} VhuInflightMsg;

/* Bits of the u64 payload of SET_VRING_KICK/CALL/ERR. */
#define VHU_VRING_IDX_MASK 0xffu
#define VHU_VRING_NOFD     0x100u

/* Virtio device status bits (GET/SET_STATUS). */
#define VHU_STATUS_ACKNOWLEDGE 0x01u
#define VHU_STATUS_DRIVER      0x02u
#define VHU_STATUS_DRIVER_OK   0x04u
#define VHU_STATUS_FEATURES_OK 0x08u
#define VHU_STATUS_NEEDS_RESET 0x40u
#define VHU_STATUS_FAILED      0x80u

/* Inflight region layout for split rings (one region per queue). */
typedef struct __attribute__((packed)) {
  uint8_t inflight;
  uint8_t padding[5];
  uint16_t next;
  uint64_t counter;
} VhuInflightDesc;

typedef struct __attribute__((packed)) {
  uint64_t features;
  uint16_t version;
  uint16_t desc_num;
  uint16_t last_batch_head;
  uint16_t used_idx;
  VhuInflightDesc desc[];
} VhuInflightQueue;

const char *vhu_request_name(uint32_t request);
