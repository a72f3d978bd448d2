#define _GNU_SOURCE
#include "CVFIO.h"

#include <fcntl.h>

#include <errno.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <linux/netlink.h>
#include <string.h>
#include <unistd.h>

int cvfio_ioctl(int fd, unsigned long request, void *arg) {
  int rc = ioctl(fd, request, arg);
  return rc < 0 ? -errno : rc;
}

int cvfio_ioctl_int(int fd, unsigned long request, unsigned long value) {
  int rc = ioctl(fd, request, value);
  return rc < 0 ? -errno : rc;
}

int cvfio_eventfd(unsigned int initval, int flags) {
  int fd = eventfd(initval, flags | EFD_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

const int cvfio_EFD_NONBLOCK = EFD_NONBLOCK;
const int cvfio_O_PATH = O_PATH;
const int cvfio_AT_EMPTY_PATH = AT_EMPTY_PATH;

uint64_t cvfio_memlock_limit(void) {
  struct rlimit limit;
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return UINT64_MAX;
  return (uint64_t)limit.rlim_cur;
}

int cvfio_epoll_create(void) {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

int cvfio_epoll_add(int epfd, int fd, uint64_t token) {
  struct epoll_event event = {.events = EPOLLIN, .data.u64 = token};
  return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
}

int cvfio_epoll_del(int epfd, int fd) {
  return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int cvfio_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout_ms) {
  struct epoll_event events[64];
  if (max > 64) max = 64;
  int n = epoll_wait(epfd, events, max, timeout_ms);
  if (n < 0) return -errno;
  for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
  return n;
}

// iommufd command numbers (enum in include/uapi/linux/iommufd.h, IOMMUFD_CMD_BASE = 0x80).
#define CVFIO_IOMMUFD_TYPE (';')
#define CVFIO_IOMMUFD_CMD_DESTROY 0x80
#define CVFIO_IOMMUFD_CMD_IOAS_ALLOC 0x81
#define CVFIO_IOMMUFD_CMD_IOAS_IOVA_RANGES 0x84
#define CVFIO_IOMMUFD_CMD_IOAS_MAP 0x85
#define CVFIO_IOMMUFD_CMD_IOAS_UNMAP 0x86
#define CVFIO_IOMMUFD_CMD_OPTION 0x87

const unsigned long cvfio_VFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
const unsigned long cvfio_VFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
const unsigned long cvfio_VFIO_SET_IOMMU = VFIO_SET_IOMMU;
const unsigned long cvfio_VFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
const unsigned long cvfio_VFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
const unsigned long cvfio_VFIO_GROUP_UNSET_CONTAINER = VFIO_GROUP_UNSET_CONTAINER;
const unsigned long cvfio_VFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
const unsigned long cvfio_VFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
const unsigned long cvfio_VFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
const unsigned long cvfio_VFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
const unsigned long cvfio_VFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
const unsigned long cvfio_VFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
const unsigned long cvfio_VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = VFIO_DEVICE_GET_PCI_HOT_RESET_INFO;
const unsigned long cvfio_VFIO_DEVICE_PCI_HOT_RESET = VFIO_DEVICE_PCI_HOT_RESET;
const unsigned long cvfio_VFIO_DEVICE_FEATURE = VFIO_DEVICE_FEATURE;
const unsigned long cvfio_VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18);
const unsigned long cvfio_VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19);
const unsigned long cvfio_VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20);
const unsigned long cvfio_VFIO_IOMMU_GET_INFO = VFIO_IOMMU_GET_INFO;
const unsigned long cvfio_VFIO_IOMMU_MAP_DMA = VFIO_IOMMU_MAP_DMA;
const unsigned long cvfio_VFIO_IOMMU_UNMAP_DMA = VFIO_IOMMU_UNMAP_DMA;
const unsigned long cvfio_VFIO_IOMMU_ENABLE = VFIO_IOMMU_ENABLE;
const unsigned long cvfio_VFIO_IOMMU_DISABLE = VFIO_IOMMU_DISABLE;
const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_GET_INFO = VFIO_IOMMU_SPAPR_TCE_GET_INFO;
const unsigned long cvfio_VFIO_IOMMU_SPAPR_REGISTER_MEMORY = VFIO_IOMMU_SPAPR_REGISTER_MEMORY;
const unsigned long cvfio_VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY = VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY;
const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_CREATE = VFIO_IOMMU_SPAPR_TCE_CREATE;
const unsigned long cvfio_VFIO_IOMMU_SPAPR_TCE_REMOVE = VFIO_IOMMU_SPAPR_TCE_REMOVE;
const unsigned long cvfio_VFIO_EEH_PE_OP = VFIO_EEH_PE_OP;
const unsigned long cvfio_IOMMU_DESTROY = _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_DESTROY);
const unsigned long cvfio_IOMMU_IOAS_ALLOC = _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_IOAS_ALLOC);
const unsigned long cvfio_IOMMU_IOAS_IOVA_RANGES =
    _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_IOAS_IOVA_RANGES);
const unsigned long cvfio_IOMMU_IOAS_MAP = _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_IOAS_MAP);
const unsigned long cvfio_IOMMU_IOAS_UNMAP = _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_IOAS_UNMAP);
const unsigned long cvfio_IOMMU_OPTION = _IO(CVFIO_IOMMUFD_TYPE, CVFIO_IOMMUFD_CMD_OPTION);

// Sizes from the kernel's uAPI. A mismatch here means the host header or our transcription
// drifted from the ABI the running kernel speaks.
_Static_assert(sizeof(struct vfio_info_cap_header) == 8, "vfio_info_cap_header");
_Static_assert(sizeof(struct vfio_group_status) == 8, "vfio_group_status");
// 20 in the 6.1 header; later headers append a u32 pad (24). The kernel copies only up to
// cap_offset (minsz 20), so either size speaks the same ABI.
_Static_assert(sizeof(struct vfio_device_info) == 20, "vfio_device_info");
_Static_assert(sizeof(struct vfio_region_info) == 32, "vfio_region_info");
_Static_assert(sizeof(struct vfio_region_sparse_mmap_area) == 16, "sparse_mmap_area");
_Static_assert(sizeof(struct vfio_region_info_cap_sparse_mmap) == 16, "cap_sparse_mmap");
_Static_assert(sizeof(struct vfio_region_info_cap_type) == 16, "cap_type");
_Static_assert(sizeof(struct vfio_irq_info) == 16, "vfio_irq_info");
_Static_assert(sizeof(struct vfio_irq_set) == 20, "vfio_irq_set");
_Static_assert(sizeof(struct vfio_pci_dependent_device) == 8, "vfio_pci_dependent_device");
_Static_assert(sizeof(struct vfio_pci_hot_reset_info) == 12, "vfio_pci_hot_reset_info");
_Static_assert(sizeof(struct vfio_pci_hot_reset) == 12, "vfio_pci_hot_reset");
_Static_assert(sizeof(struct vfio_iommu_type1_info) == 24, "vfio_iommu_type1_info");
_Static_assert(sizeof(struct vfio_iova_range) == 16, "vfio_iova_range");
_Static_assert(sizeof(struct vfio_iommu_type1_info_cap_iova_range) == 16, "cap_iova_range");
_Static_assert(sizeof(struct vfio_iommu_type1_info_cap_migration) == 32, "cap_migration");
_Static_assert(sizeof(struct vfio_iommu_type1_info_dma_avail) == 12, "cap_dma_avail");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_map) == 32, "vfio_iommu_type1_dma_map");
_Static_assert(sizeof(struct vfio_iommu_type1_dma_unmap) == 24, "vfio_iommu_type1_dma_unmap");
_Static_assert(sizeof(struct vfio_iommu_spapr_tce_info) == 32, "spapr_tce_info");
_Static_assert(sizeof(struct vfio_iommu_spapr_register_memory) == 24, "spapr_register_memory");
_Static_assert(sizeof(struct vfio_iommu_spapr_tce_create) == 40, "spapr_tce_create");
_Static_assert(sizeof(struct vfio_iommu_spapr_tce_remove) == 16, "spapr_tce_remove");
_Static_assert(sizeof(struct vfio_eeh_pe_op) == 40, "vfio_eeh_pe_op");
_Static_assert(sizeof(struct cvfio_iommu_destroy) == 8, "iommu_destroy");
_Static_assert(sizeof(struct cvfio_iommu_ioas_alloc) == 12, "iommu_ioas_alloc");
_Static_assert(sizeof(struct cvfio_iommu_iova_range) == 16, "iommu_iova_range");
_Static_assert(sizeof(struct cvfio_iommu_ioas_iova_ranges) == 32, "iommu_ioas_iova_ranges");
_Static_assert(sizeof(struct cvfio_iommu_ioas_map) == 40, "iommu_ioas_map");
_Static_assert(sizeof(struct cvfio_iommu_ioas_unmap) == 24, "iommu_ioas_unmap");
_Static_assert(sizeof(struct cvfio_iommu_option) == 24, "iommu_option");
_Static_assert(sizeof(struct cvfio_device_bind_iommufd) == 16, "vfio_device_bind_iommufd");
_Static_assert(sizeof(struct cvfio_device_attach_iommufd_pt) == 12, "attach_iommufd_pt");
_Static_assert(sizeof(struct cvfio_device_detach_iommufd_pt) == 8, "detach_iommufd_pt");
_Static_assert(offsetof(struct cvfio_iommu_ioas_map, user_va) == 16, "iommu_ioas_map.user_va");
_Static_assert(offsetof(struct vfio_iommu_type1_info, cap_offset) == 16, "type1_info.cap_offset");

// MARK: Unix sockets (broker)

#define CVFIO_MAX_FDS 16

long cvfio_send_with_fds(int socket, const void *bytes, unsigned long length, const int *fds, int count) {
  if (count < 0 || count > CVFIO_MAX_FDS) return -EINVAL;
  struct iovec iov = {.iov_base = (void *)bytes, .iov_len = length};
  union {
    char buffer[CMSG_SPACE(sizeof(int) * CVFIO_MAX_FDS)];
    struct cmsghdr align;
  } control;
  struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1};
  if (count > 0) {
    memset(&control, 0, sizeof(control));
    message.msg_control = control.buffer;
    message.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * count);
    memcpy(CMSG_DATA(header), fds, sizeof(int) * count);
  }
  ssize_t sent = sendmsg(socket, &message, MSG_NOSIGNAL);
  return sent < 0 ? -errno : sent;
}

/// recvmsg(2) with room for `room` descriptors (close-on-exec), each stored in `fds` while
/// fewer than `max` arrived and closed past that; shared by the two receive calls below.
static long cvfio_receive(
    int socket, void *bytes, unsigned long length, int *fds, int max, int room, int *received, int *truncated) {
  *received = 0;
  *truncated = 0;
  struct iovec iov = {.iov_base = bytes, .iov_len = length};
  union {
    char buffer[CMSG_SPACE(sizeof(int) * CVFIO_SCM_MAX_FD)];
    struct cmsghdr align;
  } control;
  struct msghdr message = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = CMSG_SPACE(sizeof(int) * room)};
  ssize_t got = recvmsg(socket, &message, MSG_CMSG_CLOEXEC);
  if (got < 0) return -errno;
  if (message.msg_flags & MSG_CTRUNC) *truncated = 1;
  for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
    if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
    int n = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *arrived = (int *)CMSG_DATA(header);
    for (int i = 0; i < n; i++) {
      if (*received < max) {
        fds[(*received)++] = arrived[i];
      } else {
        close(arrived[i]);
        *truncated = 1;
      }
    }
  }
  return got;
}

long cvfio_receive_with_fds(
    int socket, void *bytes, unsigned long length, int *fds, int max, int *received, int *truncated) {
  if (max < 0) max = 0;
  if (max > CVFIO_MAX_FDS) max = CVFIO_MAX_FDS;
  return cvfio_receive(socket, bytes, length, fds, max, CVFIO_MAX_FDS, received, truncated);
}

int cvfio_peer_credentials(int socket, int32_t *pid, uint32_t *uid, uint32_t *gid) {
  struct ucred credentials;
  socklen_t size = sizeof(credentials);
  if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &credentials, &size) < 0) return -errno;
  *pid = credentials.pid;
  *uid = credentials.uid;
  *gid = credentials.gid;
  return 0;
}

static int cvfio_unix_address(const char *path, struct sockaddr_un *address) {
  memset(address, 0, sizeof(*address));
  address->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(address->sun_path)) return -ENAMETOOLONG;
  strcpy(address->sun_path, path);
  return 0;
}

int cvfio_unix_listen(const char *path, int backlog, int nonblocking, int replace) {
  struct sockaddr_un address;
  int status = cvfio_unix_address(path, &address);
  if (status < 0) return status;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -errno;
  if (replace) unlink(path);
  if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 || listen(fd, backlog) < 0) {
    int error = errno;
    close(fd);
    return -error;
  }
  return fd;
}

int cvfio_unix_connect(const char *path) {
  struct sockaddr_un address;
  int status = cvfio_unix_address(path, &address);
  if (status < 0) return status;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
    int error = errno;
    close(fd);
    return -error;
  }
  return fd;
}

int cvfio_accept(int listener) {
  int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  return fd < 0 ? -errno : fd;
}

int cvfio_socketpair(int fds[2]) {
  return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0 ? -errno : 0;
}

int cvfio_is_unix_listener(int fd) {
  int type = 0, listening = 0;
  struct sockaddr_un address;
  socklen_t size = sizeof(int), addressSize = sizeof(address);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) < 0 || type != SOCK_STREAM) return 0;
  size = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) < 0 || !listening) return 0;
  if (getsockname(fd, (struct sockaddr *)&address, &addressSize) < 0) return 0;
  return address.sun_family == AF_UNIX;
}

int cvfio_epoll_want_write(int epfd, int fd, uint64_t token, int writable) {
  struct epoll_event event = {.events = EPOLLIN | (writable ? EPOLLOUT : 0), .data.u64 = token};
  return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) < 0 ? -errno : 0;
}

#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int cvfio_refuse_rights(int socket) {
  int off = 0;
  return setsockopt(socket, SOL_SOCKET, SO_PASSRIGHTS, &off, sizeof(off)) < 0 ? -errno : 0;
}

long cvfio_receive_all_fds(int socket, void *bytes, unsigned long length, int *fds, int *received) {
  int truncated = 0;
  return cvfio_receive(socket, bytes, length, fds, CVFIO_SCM_MAX_FD, CVFIO_SCM_MAX_FD, received, &truncated);
}

int cvfio_abort_on_close(int socket) {
  struct linger now = {.l_onoff = 1, .l_linger = 0};
  return setsockopt(socket, SOL_SOCKET, SO_LINGER, &now, sizeof(now)) < 0 ? -errno : 0;
}

int cvfio_peer_pidfd(int socket) {
  int pidfd = -1;
  socklen_t size = sizeof(pidfd);
  if (getsockopt(socket, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &size) < 0) return -errno;
  return pidfd;
}

int cvfio_pidfd_open(int pid) {
  long fd = syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : (int)fd;
}

int cvfio_pidfd_send_signal(int pidfd, int signal) {
  return syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0) < 0 ? -errno : 0;
}

int cvfio_epoll_interest(int epfd, int fd, uint64_t token, int readable, int writable) {
  struct epoll_event event = {.events = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0), .data.u64 = token};
  return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &event) < 0 ? -errno : 0;
}

int cvfio_uevent_socket(void) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
  if (fd < 0) return -errno;
  struct sockaddr_nl address = {.nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 1};
  if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
    int error = errno;
    close(fd);
    return -error;
  }
  return fd;
}

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

int cvfio_openat2(int dirfd, const char *path, int flags, unsigned int mode, unsigned long long resolve) {
  struct {
    unsigned long long flags, mode, resolve;
  } how = {(unsigned long long)(unsigned int)flags, mode, resolve};
  long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
  return fd < 0 ? -errno : (int)fd;
}
