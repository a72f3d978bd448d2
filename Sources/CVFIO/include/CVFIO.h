// C shim for swift-vfio: the kernel's VFIO uAPI structures and request numbers, and an
// ioctl that Swift can call (the libc one is variadic). Every symbol is prefixed `cvfio_`.
#ifndef CVFIO_H
#define CVFIO_H

#include <stdint.h>
#include <linux/vfio.h>

/// ioctl(2) returning 0 (or the positive result) on success and -errno on failure.
int cvfio_ioctl(int fd, unsigned long request, void *arg);

/// ioctl(2) with an integer argument (VFIO_GROUP_SET_CONTAINER takes a pointer, but
/// VFIO_SET_IOMMU and VFIO_CHECK_EXTENSION take the value itself).
int cvfio_ioctl_int(int fd, unsigned long request, unsigned long value);

#endif
