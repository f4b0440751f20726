/* vhu-display-proto.h: the vhost-user-gpu display protocol (GPU_SET_SOCKET channel).
 *
 * Requests flow from the GPU backend to the frontend; the frontend only replies
 * (flags VHU_DISPLAY_FLAG_REPLY, same request id).  Same 12-byte header as
 * vhost-user, without version bits. */
#pragma once

#include <stdint.h>

#define VHU_DISPLAY_FLAG_REPLY   0x4u
#define VHU_DISPLAY_MAX_SCANOUTS 16u
#define VHU_DISPLAY_CURSOR_SIZE  64u

/* Protocol features negotiated with GET/SET_PROTOCOL_FEATURES. */
#define VHU_DISPLAY_PF_EDID    0
#define VHU_DISPLAY_PF_DMABUF2 1

typedef enum {
  VHU_DISPLAY_GET_PROTOCOL_FEATURES = 1,
  VHU_DISPLAY_SET_PROTOCOL_FEATURES = 2,
  VHU_DISPLAY_GET_DISPLAY_INFO = 3,
  VHU_DISPLAY_CURSOR_POS = 4,
  VHU_DISPLAY_CURSOR_POS_HIDE = 5,
  VHU_DISPLAY_CURSOR_UPDATE = 6,
  VHU_DISPLAY_SCANOUT = 7,
  VHU_DISPLAY_UPDATE = 8,
  VHU_DISPLAY_DMABUF_SCANOUT = 9,
  VHU_DISPLAY_DMABUF_UPDATE = 10,
  VHU_DISPLAY_GET_EDID = 11,
  VHU_DISPLAY_DMABUF_SCANOUT2 = 12,
} VhuDisplayRequest;

typedef struct __attribute__((packed)) {
  uint32_t scanout_id;
  uint32_t x;
  uint32_t y;
} VhuDisplayCursorPos;

typedef struct __attribute__((packed)) {
  VhuDisplayCursorPos pos;
  uint32_t hot_x;
  uint32_t hot_y;
  uint32_t data[VHU_DISPLAY_CURSOR_SIZE * VHU_DISPLAY_CURSOR_SIZE];
} VhuDisplayCursorUpdate;

typedef struct __attribute__((packed)) {
  uint32_t scanout_id;
  uint32_t width;
  uint32_t height;
} VhuDisplayScanout;

/* Followed by width*height X8R8G8B8 pixels, stride width*4. */
typedef struct __attribute__((packed)) {
  uint32_t scanout_id;
  uint32_t x;
  uint32_t y;
  uint32_t width;
  uint32_t height;
} VhuDisplayUpdate;

typedef struct __attribute__((packed)) {
  uint32_t scanout_id;
  uint32_t x;
  uint32_t y;
  uint32_t width;
  uint32_t height;
  uint32_t fd_width;
  uint32_t fd_height;
  uint32_t fd_stride;
  uint32_t fd_flags;
  int32_t fd_drm_fourcc;
} VhuDisplayDmabufScanout;

typedef struct __attribute__((packed)) {
  VhuDisplayDmabufScanout dmabuf;
  uint64_t modifier;
} VhuDisplayDmabufScanout2;

/* fd_drm_fourcc values (DRM fourccs, linux/drm_fourcc.h) of the eight
 * virtio-gpu formats' memory layouts, and the one modifier we send. */
#define VHU_DISPLAY_FOURCC(a, b, c, d)                                                             \
  ((int32_t)((uint32_t)(a) | ((uint32_t)(b) << 8) | ((uint32_t)(c) << 16) | ((uint32_t)(d) << 24)))
#define VHU_DISPLAY_FOURCC_XRGB8888 VHU_DISPLAY_FOURCC('X', 'R', '2', '4') /* B G R X bytes */
#define VHU_DISPLAY_FOURCC_ARGB8888 VHU_DISPLAY_FOURCC('A', 'R', '2', '4') /* B G R A */
#define VHU_DISPLAY_FOURCC_BGRX8888 VHU_DISPLAY_FOURCC('B', 'X', '2', '4') /* X R G B */
#define VHU_DISPLAY_FOURCC_BGRA8888 VHU_DISPLAY_FOURCC('B', 'A', '2', '4') /* A R G B */
#define VHU_DISPLAY_FOURCC_XBGR8888 VHU_DISPLAY_FOURCC('X', 'B', '2', '4') /* R G B X */
#define VHU_DISPLAY_FOURCC_ABGR8888 VHU_DISPLAY_FOURCC('A', 'B', '2', '4') /* R G B A */
#define VHU_DISPLAY_FOURCC_RGBX8888 VHU_DISPLAY_FOURCC('R', 'X', '2', '4') /* X B G R */
#define VHU_DISPLAY_FOURCC_RGBA8888 VHU_DISPLAY_FOURCC('R', 'A', '2', '4') /* A B G R */
#define VHU_DISPLAY_MODIFIER_LINEAR 0ull

typedef struct __attribute__((packed)) {
  uint32_t scanout_id;
} VhuDisplayEdidRequest;
