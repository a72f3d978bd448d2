// sPAPR TCE reference for the VFIO library: the ioctl sequence the Swift `Container` uses on
// POWER (SET_IOMMU v2, TCE_GET_INFO, REGISTER_MEMORY, TCE_CREATE/REMOVE, MAP/UNMAP_DMA,
// EEH_PE_OP), driven against QEMU's edu in a pseries guest, with every argument dumped in hex
// so Tests/VFIOTests can compare the Swift encoders byte for byte. There is no Swift toolchain
// for ppc64le here, hence C.
//   powerpc64le-linux-gnu-gcc -O2 -static -o spapr_edu Tests/Integration/spapr/spapr_edu.c
// usage: spapr_edu BDF      prints "SPAPR-EDU PASS" and exits 0 when every check passed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int failures;

static void dump(const char *label, const void *p, size_t n) {
  const unsigned char *b = p;
  printf("%s ", label);
  for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
  printf("\n");
}

// ioctl with the argument dumped before and after, as "IOCTL name rc in= out=".
static int call(int fd, unsigned long req, const char *name, void *arg, size_t n) {
  char label[128];
  if (arg && n) {
    snprintf(label, sizeof label, "IOCTL %s in", name);
    dump(label, arg, n);
  }
  int rc = arg ? ioctl(fd, req, arg) : ioctl(fd, req);
  int err = rc < 0 ? errno : 0;
  printf("IOCTL %s rc=%d errno=%d\n", name, rc, err);
  if (arg && n && rc >= 0) {
    snprintf(label, sizeof label, "IOCTL %s out", name);
    dump(label, arg, n);
  }
  errno = err;
  return rc;
}

static void check(int ok, const char *what) {
  printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) failures++;
}

static int dev;
static uint64_t bar0;

// edu's registers are big-endian on a big-endian-native QEMU target (ppc64).
static uint32_t rd32(uint64_t off) {
  uint32_t v = 0;
  if (pread(dev, &v, 4, bar0 + off) != 4) perror("pread");
  return __builtin_bswap32(v);
}
static void wr32(uint64_t off, uint32_t v) {
  v = __builtin_bswap32(v);
  if (pwrite(dev, &v, 4, bar0 + off) != 4) perror("pwrite");
}
static void wr64(uint64_t off, uint64_t v) {
  v = __builtin_bswap64(v);
  if (pwrite(dev, &v, 8, bar0 + off) != 8) perror("pwrite64");
}

static int wait_event(int efd) {
  struct pollfd p = {.fd = efd, .events = POLLIN};
  if (poll(&p, 1, 10000) != 1) return 0;
  uint64_t n;
  return read(efd, &n, 8) == 8;
}

static int edu_dma(int efd, uint64_t src, uint64_t dst, uint64_t n, int to_ram) {
  wr64(0x80, src);
  wr64(0x88, dst);
  wr64(0x90, n);
  wr64(0x98, 1 | 4 | (to_ram ? 2 : 0));
  int ok = wait_event(efd);
  uint32_t st = rd32(0x24);
  wr32(0x64, st);
  return ok && (st & 0x100);
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: spapr_edu BDF\n"); return 2; }
  const char *bdf = argv[1];
  char path[512], link[256];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t ln = readlink(path, link, sizeof link - 1);
  if (ln < 0) { perror(path); return 1; }
  link[ln] = 0;
  int container = open("/dev/vfio/vfio", O_RDWR);
  check(call(container, VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION", NULL, 0) == VFIO_API_VERSION, "api version");
  snprintf(path, sizeof path, "/dev/vfio/%s", strrchr(link, '/') + 1);
  int group = open(path, O_RDWR);
  struct vfio_group_status gs = {.argsz = sizeof gs};
  call(group, VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS", &gs, sizeof gs);
  check(gs.flags & VFIO_GROUP_FLAGS_VIABLE, "group viable");
  check(call(group, VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER", &container, 0) == 0, "set container");
  // The order the Swift Container asks: type1v2, then sPAPR TCE v2.
  int t1 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
  int v2 = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_SPAPR_TCE_v2_IOMMU);
  printf("CHECK_EXTENSION type1v2=%d spapr_v2=%d eeh=%d\n", t1, v2, ioctl(container, VFIO_CHECK_EXTENSION, VFIO_EEH));
  check(t1 == 0 && v2 == 1, "sPAPR TCE v2 is the best model offered");
  check(ioctl(container, VFIO_SET_IOMMU, VFIO_SPAPR_TCE_v2_IOMMU) == 0, "VFIO_SET_IOMMU sPAPR TCE v2");

  struct vfio_iommu_spapr_tce_info info = {.argsz = sizeof info};
  check(call(container, VFIO_IOMMU_SPAPR_TCE_GET_INFO, "VFIO_IOMMU_SPAPR_TCE_GET_INFO", &info, sizeof info) == 0, "tce get info");
  printf("dma32 window 0x%x+0x%x ddw=%d pgsizes=0x%llx windows=%u levels=%u\n", info.dma32_window_start,
         info.dma32_window_size, !!(info.flags & VFIO_IOMMU_SPAPR_INFO_DDW), (unsigned long long)info.ddw.pgsizes,
         info.ddw.max_dynamic_windows_supported, info.ddw.levels);

  dev = call(group, VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD", (void *)bdf, 0);
  check(dev >= 0, "device fd");
  struct vfio_region_info r = {.argsz = sizeof r, .index = VFIO_PCI_BAR0_REGION_INDEX};
  call(dev, VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO", &r, sizeof r);
  bar0 = r.offset;
  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg);
  uint16_t cmd;
  pread(dev, &cmd, 2, cfg.offset + 4);
  cmd |= 0x6;  // memory space + bus master (config space is little-endian everywhere)
  pwrite(dev, &cmd, 2, cfg.offset + 4);
  check(rd32(0) == 0x010000ed, "edu identity 0x010000ed");

  size_t page = sysconf(_SC_PAGESIZE), len = 2 * page;
  unsigned char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 0, len);
  struct vfio_iommu_spapr_register_memory reg = {.argsz = sizeof reg, .vaddr = (uintptr_t)buf, .size = len};
  check(call(container, VFIO_IOMMU_SPAPR_REGISTER_MEMORY, "VFIO_IOMMU_SPAPR_REGISTER_MEMORY", &reg, sizeof reg) == 0,
        "register memory");

  // A dynamic window: created, mapped into and removed again (edu's 28-bit mask cannot reach it).
  if (info.flags & VFIO_IOMMU_SPAPR_INFO_DDW) {
    struct vfio_iommu_spapr_tce_create cr = {.argsz = sizeof cr, .page_shift = __builtin_ctzl(page),
                                             .window_size = 1ull << 30, .levels = 1};
    int rc = call(container, VFIO_IOMMU_SPAPR_TCE_CREATE, "VFIO_IOMMU_SPAPR_TCE_CREATE", &cr, sizeof cr);
    check(rc == 0 && cr.start_addr != 0, "create dynamic DMA window");
    if (rc == 0) {
      printf("ddw start 0x%llx\n", (unsigned long long)cr.start_addr);
      struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)buf, .iova = cr.start_addr, .size = len};
      check(call(container, VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA", &m, sizeof m) == 0, "map into the dynamic window");
      struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = cr.start_addr, .size = len};
      check(call(container, VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA", &u, sizeof u) == 0 && u.size == len,
            "unmap from the dynamic window");
      struct vfio_iommu_spapr_tce_remove rm = {.argsz = sizeof rm, .start_addr = cr.start_addr};
      check(call(container, VFIO_IOMMU_SPAPR_TCE_REMOVE, "VFIO_IOMMU_SPAPR_TCE_REMOVE", &rm, sizeof rm) == 0,
            "remove dynamic DMA window");
    }
  }

  uint64_t iova = info.dma32_window_start + 0x100000;
  struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = 3, .vaddr = (uintptr_t)buf, .iova = iova, .size = len};
  check(call(container, VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA", &m, sizeof m) == 0, "map in the 32-bit window");

  int efd = eventfd(0, EFD_CLOEXEC);
  struct { struct vfio_irq_set s; int32_t fd; } irq = {
      {.argsz = sizeof irq, .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
       .index = VFIO_PCI_MSI_IRQ_INDEX, .start = 0, .count = 1}, efd};
  check(call(dev, VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS", &irq, sizeof irq) == 0, "MSI to eventfd");

  size_t n = 1024;
  for (size_t i = 0; i < page; i++) buf[i] = (unsigned char)(i * 7 + 0x5a);
  check(edu_dma(efd, iova, 0x40000, n, 0), "edu DMA RAM->device, MSI");
  check(edu_dma(efd, 0x40000, iova + page, n, 1), "edu DMA device->RAM, MSI");
  check(memcmp(buf, buf + page, n) == 0, "bytes identical after the round trip");

  struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = len};
  check(call(container, VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA", &u, sizeof u) == 0 && u.size == len, "unmap");
  memset(buf + page, 0, n);
  edu_dma(efd, 0x40000, iova + page, n, 1);
  int landed = 0;
  for (size_t i = 0; i < n; i++) landed |= buf[page + i];
  check(!landed, "DMA to the unmapped IOVA did not land");

  check(call(container, VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY", &reg, sizeof reg) == 0,
        "unregister memory");
  // EEH: the first 12 bytes (argsz, flags, op) are what the Swift encoder sends for non-injection ops.
  struct vfio_eeh_pe_op eeh = {.argsz = 12, .op = VFIO_EEH_PE_GET_STATE};
  int st = call(container, VFIO_EEH_PE_OP, "VFIO_EEH_PE_OP", &eeh, 12);
  printf("EEH get state rc=%d (%s)\n", st, st < 0 ? strerror(errno) : "ok");

  printf("SPAPR-EDU %s (%d failed)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
