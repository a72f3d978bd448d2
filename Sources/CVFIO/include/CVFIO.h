// C shim for swift-vfio: the kernel's VFIO and iommufd uAPI structures and request numbers,
// and an ioctl that Swift can call (the libc one is variadic). Every symbol is prefixed `cvfio_`.
//
// linux/vfio.h comes from the build host (Debian 12: linux-libc-dev 6.1). What 6.1 lacks —
// linux/iommufd.h and the device-cdev ioctls added in 6.6 — is written out below from the
// kernel's documented ABI (include/uapi/linux/iommufd.h, include/uapi/linux/vfio.h). Sizes are
// pinned with _Static_assert here and again in Tests/VFIOTests so header drift fails the build.
#ifndef CVFIO_H
#define CVFIO_H

#include <stdint.h>
#include <linux/types.h>
#include <linux/vfio.h>

/// ioctl(2) returning 0 (or the positive result) on success and -errno on failure.
int cvfio_ioctl(int fd, unsigned long request, void *arg);

/// ioctl(2) with an integer argument (VFIO_SET_IOMMU and VFIO_CHECK_EXTENSION take the value).
int cvfio_ioctl_int(int fd, unsigned long request, unsigned long value);

/// eventfd(2) with EFD_CLOEXEC added; the descriptor or -errno. (Glibc's module map lacks it.)
int cvfio_eventfd(unsigned int initval, int flags);

/// Non-blocking flag for cvfio_eventfd.
extern const int cvfio_EFD_NONBLOCK;

/// open(2)'s O_PATH and *at(2)'s AT_EMPTY_PATH, which Glibc's module map hides (_GNU_SOURCE):
/// the manager changes a VFIO node's owner through a descriptor that never followed a link.
extern const int cvfio_O_PATH;
extern const int cvfio_AT_EMPTY_PATH;

/// The soft RLIMIT_MEMLOCK in bytes; UINT64_MAX when unlimited or unknown.
uint64_t cvfio_memlock_limit(void);

/// epoll_create1(EPOLL_CLOEXEC); the descriptor or -errno.
int cvfio_epoll_create(void);

/// Adds `fd` for level-triggered readability with `token` as its user data; 0 or -errno.
int cvfio_epoll_add(int epfd, int fd, uint64_t token);

/// Removes `fd`; 0 or -errno.
int cvfio_epoll_del(int epfd, int fd);

/// epoll_wait(2) storing each ready descriptor's token in `tokens`; the count or -errno.
int cvfio_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout_ms);

// Unix-socket primitives of the broker: descriptors travel as SCM_RIGHTS, callers are known by
// SO_PEERCRED. Each returns the count or 0, or -errno; nothing here retries or blocks longer
// than the socket's own mode says.

/// sendmsg(2) of `length` bytes with `count` descriptors (at most 16) in one SCM_RIGHTS
/// message, MSG_NOSIGNAL; the bytes sent or -errno.
long cvfio_send_with_fds(int socket, const void *bytes, unsigned long length, const int *fds, int count);

/// recvmsg(2) into `bytes` with up to `max` (at most 16) descriptors, MSG_CMSG_CLOEXEC; stores
/// how many arrived in `*received` (the excess beyond `max` is closed, never leaked) and sets
/// `*truncated` when the kernel cut the control data. The bytes read, 0 at end of stream, or -errno.
long cvfio_receive_with_fds(
    int socket, void *bytes, unsigned long length, int *fds, int max, int *received, int *truncated);

/// SO_PEERCRED of a connected Unix socket; 0 or -errno.
int cvfio_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC [| SOCK_NONBLOCK]) bound to `path` (unlinked
/// first when `replace`) and listening with `backlog`; the descriptor or -errno.
int cvfio_unix_listen(const char *path, int backlog, int nonblocking, int replace);

/// A connected AF_UNIX stream socket to `path` (blocking, close-on-exec); the descriptor or -errno.
int cvfio_unix_connect(const char *path);

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK; the descriptor or -errno.
int cvfio_accept(int listener);

/// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC); 0 or -errno.
int cvfio_socketpair(int fds[2]);

/// Whether `fd` is a listening AF_UNIX stream socket (socket activation hands such ones over).
int cvfio_is_unix_listener(int fd);

/// epoll_ctl(MOD) to also wait for writability (`writable` != 0) or not.
int cvfio_epoll_want_write(int epfd, int fd, uint64_t token, int writable);

// Volatile MMIO accessors: one load or store of exactly the given width, never merged or elided.
static inline uint8_t cvfio_mmio_read8(const void *p) { return *(const volatile uint8_t *)p; }
static inline uint16_t cvfio_mmio_read16(const void *p) { return *(const volatile uint16_t *)p; }
static inline uint32_t cvfio_mmio_read32(const void *p) { return *(const volatile uint32_t *)p; }
static inline uint64_t cvfio_mmio_read64(const void *p) { return *(const volatile uint64_t *)p; }
static inline void cvfio_mmio_write8(void *p, uint8_t v) { *(volatile uint8_t *)p = v; }
static inline void cvfio_mmio_write16(void *p, uint16_t v) { *(volatile uint16_t *)p = v; }
static inline void cvfio_mmio_write32(void *p, uint32_t v) { *(volatile uint32_t *)p = v; }
static inline void cvfio_mmio_write64(void *p, uint64_t v) { *(volatile uint64_t *)p = v; }

// MARK: iommufd (include/uapi/linux/iommufd.h, stable since 6.2)

struct cvfio_iommu_destroy {
  __u32 size;
  __u32 id;
};

struct cvfio_iommu_ioas_alloc {
  __u32 size;
  __u32 flags;
  __u32 out_ioas_id;
};

struct cvfio_iommu_iova_range {
  __aligned_u64 start;
  __aligned_u64 last;  // inclusive
};

struct cvfio_iommu_ioas_iova_ranges {
  __u32 size;
  __u32 ioas_id;
  __u32 num_iovas;
  __u32 reserved;
  __aligned_u64 allowed_iovas;  // user pointer to struct cvfio_iommu_iova_range[]
  __aligned_u64 out_iova_alignment;
};

enum {
  CVFIO_IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
  CVFIO_IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
  CVFIO_IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

struct cvfio_iommu_ioas_map {
  __u32 size;
  __u32 flags;
  __u32 ioas_id;
  __u32 reserved;
  __aligned_u64 user_va;
  __aligned_u64 length;
  __aligned_u64 iova;
};

struct cvfio_iommu_ioas_unmap {
  __u32 size;
  __u32 ioas_id;
  __aligned_u64 iova;
  __aligned_u64 length;
};

enum {
  CVFIO_IOMMU_OPTION_RLIMIT_MODE = 0,
  CVFIO_IOMMU_OPTION_HUGE_PAGES = 1,
  CVFIO_IOMMU_OPTION_OP_SET = 0,
  CVFIO_IOMMU_OPTION_OP_GET = 1,
};

struct cvfio_iommu_option {
  __u32 size;
  __u32 option_id;
  __u16 op;
  __u16 reserved;
  __u32 object_id;
  __aligned_u64 val64;
};

// MARK: VFIO device cdev (include/uapi/linux/vfio.h, 6.6+)

struct cvfio_device_bind_iommufd {
  __u32 argsz;
  __u32 flags;
  __s32 iommufd;
  __u32 out_devid;
};

struct cvfio_device_attach_iommufd_pt {
  __u32 argsz;
  __u32 flags;
  __u32 pt_id;
};

struct cvfio_device_detach_iommufd_pt {
  __u32 argsz;
  __u32 flags;
};

/// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO flags added with the cdev interface (6.6).
enum {
  CVFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0,
  CVFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1,
};

// MARK: Request numbers. _IO() is a macro Swift cannot import, so each is exported as a constant.

extern const unsigned long cvfio_VFIO_GET_API_VERSION;
extern const unsigned long cvfio_VFIO_CHECK_EXTENSION;
extern const unsigned long cvfio_VFIO_SET_IOMMU;
extern const unsigned long cvfio_VFIO_GROUP_GET_STATUS;
extern const unsigned long cvfio_VFIO_GROUP_SET_CONTAINER;
extern const unsigned long cvfio_VFIO_GROUP_UNSET_CONTAINER;
extern const unsigned long cvfio_VFIO_GROUP_GET_DEVICE_FD;
extern const unsigned long cvfio_VFIO_DEVICE_GET_INFO;
extern const unsigned long cvfio_VFIO_DEVICE_GET_REGION_INFO;
extern const unsigned long cvfio_VFIO_DEVICE_GET_IRQ_INFO;
extern const unsigned long cvfio_VFIO_DEVICE_SET_IRQS;
extern const unsigned long cvfio_VFIO_DEVICE_RESET;
extern const unsigned long cvfio_VFIO_DEVICE_GET_PCI_HOT_RESET_INFO;
extern const unsigned long cvfio_VFIO_DEVICE_PCI_HOT_RESET;
extern const unsigned long cvfio_VFIO_DEVICE_FEATURE;
extern const unsigned long cvfio_VFIO_DEVICE_BIND_IOMMUFD;
extern const unsigned long cvfio_VFIO_DEVICE_ATTACH_IOMMUFD_PT;
extern const unsigned long cvfio_VFIO_DEVICE_DETACH_IOMMUFD_PT;
extern const unsigned long cvfio_VFIO_IOMMU_GET_INFO;
extern const unsigned long cvfio_VFIO_IOMMU_MAP_DMA;
extern const unsigned long cvfio_VFIO_IOMMU_UNMAP_DMA;
extern const unsigned long cvfio_VFIO_IOMMU_ENABLE;
extern const unsigned long cvfio_VFIO_IOMMU_DISABLE;
extern const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_GET_INFO;
extern const unsigned long cvfio_VFIO_IOMMU_SPAPR_REGISTER_MEMORY;
extern const unsigned long cvfio_VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY;
extern const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_CREATE;
extern const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_REMOVE;
extern const unsigned long cvfio_VFIO_EEH_PE_OP;
extern const unsigned long cvfio_IOMMU_DESTROY;
extern const unsigned long cvfio_IOMMU_IOAS_ALLOC;
extern const unsigned long cvfio_IOMMU_IOAS_IOVA_RANGES;
extern const unsigned long cvfio_IOMMU_IOAS_MAP;
extern const unsigned long cvfio_IOMMU_IOAS_UNMAP;
extern const unsigned long cvfio_IOMMU_OPTION;


// What the broker needs so that no client can make its loop wait: descriptors refused by the
// kernel (or taken off the loop to be closed), peers known by pidfds, uevents as they happen.

/// SO_PASSRIGHTS off (Linux 6.16+): a peer's SCM_RIGHTS then fails in its own sendmsg with
/// EPERM and no descriptor ever reaches this socket. 0, or -errno (-ENOPROTOOPT before 6.16).
int cvfio_refuse_rights(int socket);

/// The most descriptors one message can carry (the kernel's SCM_MAX_FD).
#define CVFIO_SCM_MAX_FD 253

/// recvmsg(2) with room for every descriptor a message can carry (CVFIO_SCM_MAX_FD, close-on-exec):
/// none is left for the kernel to close in this thread (a close can block: a socket that
/// lingers). `fds` has room for CVFIO_SCM_MAX_FD; `*received` says how many arrived.
long cvfio_receive_all_fds(int socket, void *bytes, unsigned long length, int *fds, int *received);

/// SO_LINGER {on, 0}: closing the socket resets it at once instead of waiting to send.
int cvfio_abort_on_close(int socket);

/// SO_PEERPIDFD (Linux 6.5+): a pidfd of the process that connected; the descriptor or -errno.
int cvfio_peer_pidfd(int socket);

/// pidfd_open(2); the descriptor or -errno.
int cvfio_pidfd_open(int pid);

/// pidfd_send_signal(2); 0 or -errno.
int cvfio_pidfd_send_signal(int pidfd, int signal);

/// epoll_ctl(MOD) waiting for readability and/or writability (neither: errors and hang-ups only).
int cvfio_epoll_interest(int epfd, int fd, uint64_t token, int readable, int writable);

/// A non-blocking NETLINK_KOBJECT_UEVENT socket joined to the kernel's group; the descriptor or -errno.
int cvfio_uevent_socket(void);


/// openat2(2) (Linux 5.6+): `path` below `dirfd` with `resolve` (RESOLVE_* bits); the
/// descriptor or -errno.
int cvfio_openat2(int dirfd, const char *path, int flags, unsigned int mode, unsigned long long resolve);
#define CVFIO_RESOLVE_NO_MAGICLINKS 0x02
#define CVFIO_RESOLVE_NO_SYMLINKS 0x04
#define CVFIO_RESOLVE_BENEATH 0x08

#endif
