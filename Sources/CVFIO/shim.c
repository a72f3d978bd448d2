#include "CVFIO.h"

#include <errno.h>
#include <sys/ioctl.h>

int cvfio_ioctl(int fd, unsigned long request, void *arg) {
  int rc = ioctl(fd, request, arg);
  return rc < 0 ? -errno : rc;
}

int cvfio_ioctl_int(int fd, unsigned long request, unsigned long value) {
  int rc = ioctl(fd, request, value);
  return rc < 0 ? -errno : rc;
}
