// C reference for vfio-map-bench: the same map/unmap loop with raw ioctls and nothing else,
// on the legacy type1 container or an iommufd IOAS. Built statically for the lab guests:
//   gcc -O2 -static -o map_bench bench/map_bench.c -Ibench
// vfio-map-bench --compare PATH runs it interleaved with the Swift side and parses its JSON.
// usage: map_bench BDF legacy|iommufd SIZE_MIB CHUNK[,CHUNK...] [thp]   (CHUNK 0 = one call)
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// iommufd and cdev ABI (not in Debian 12's 6.1 headers); from include/uapi/linux/iommufd.h.
struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach_pt { uint32_t argsz, flags, pt_id; };
#define IOMMU_IOAS_ALLOC _IO(';', 0x81)
#define IOMMU_IOAS_MAP _IO(';', 0x85)
#define IOMMU_IOAS_UNMAP _IO(';', 0x86)
#define BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define ATTACH_PT _IO(VFIO_TYPE, VFIO_BASE + 19)

static void die(const char *what) { fprintf(stderr, "map_bench: %s: %s\n", what, strerror(errno)); exit(1); }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int legacy, mapfd;  // container fd or iommufd
static uint32_t ioas;

static void map(uint64_t va, uint64_t iova, uint64_t len) {
  if (legacy) {
    struct vfio_iommu_type1_dma_map m = {.argsz = sizeof m, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                         .vaddr = va, .iova = iova, .size = len};
    if (ioctl(mapfd, VFIO_IOMMU_MAP_DMA, &m)) die("VFIO_IOMMU_MAP_DMA");
  } else {
    struct ioas_map m = {.size = sizeof m, .flags = 7, .ioas_id = ioas, .user_va = va, .length = len, .iova = iova};
    if (ioctl(mapfd, IOMMU_IOAS_MAP, &m)) die("IOMMU_IOAS_MAP");
  }
}

static void unmap(uint64_t iova, uint64_t len) {
  if (legacy) {
    struct vfio_iommu_type1_dma_unmap u = {.argsz = sizeof u, .iova = iova, .size = len};
    if (ioctl(mapfd, VFIO_IOMMU_UNMAP_DMA, &u)) die("VFIO_IOMMU_UNMAP_DMA");
  } else {
    struct ioas_unmap u = {.size = sizeof u, .ioas_id = ioas, .iova = iova, .length = len};
    if (ioctl(mapfd, IOMMU_IOAS_UNMAP, &u)) die("IOMMU_IOAS_UNMAP");
  }
}

int main(int argc, char **argv) {
  if (argc < 5) { fprintf(stderr, "usage: map_bench BDF legacy|iommufd SIZE_MIB CHUNK[,CHUNK...] [thp]\n"); return 2; }
  const char *bdf = argv[1];
  legacy = strcmp(argv[2], "legacy") == 0;
  size_t size = (size_t)atoi(argv[3]) << 20;
  int thp = argc > 5 && strcmp(argv[5], "thp") == 0;
  char path[512];
  int devfd;
  if (legacy) {
    char link[256];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) die("readlink iommu_group");
    link[n] = 0;
    mapfd = open("/dev/vfio/vfio", O_RDWR);
    if (mapfd < 0) die("open /dev/vfio/vfio");
    snprintf(path, sizeof path, "/dev/vfio/%s", strrchr(link, '/') + 1);
    int group = open(path, O_RDWR);
    if (group < 0) die(path);
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &mapfd)) die("VFIO_GROUP_SET_CONTAINER");
    if (ioctl(mapfd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("VFIO_SET_IOMMU");
    devfd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (devfd < 0) die("VFIO_GROUP_GET_DEVICE_FD");
  } else {
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/vfio-dev", bdf);
    DIR *d = opendir(path);
    if (!d) die(path);
    struct dirent *e;
    while ((e = readdir(d)) && strncmp(e->d_name, "vfio", 4)) {}
    if (!e) die("no vfio-dev node");
    snprintf(path, sizeof path, "/dev/vfio/devices/%s", e->d_name);
    closedir(d);
    mapfd = open("/dev/iommu", O_RDWR);
    if (mapfd < 0) die("open /dev/iommu");
    struct ioas_alloc a = {.size = sizeof a};
    if (ioctl(mapfd, IOMMU_IOAS_ALLOC, &a)) die("IOMMU_IOAS_ALLOC");
    ioas = a.out_ioas_id;
    devfd = open(path, O_RDWR);
    if (devfd < 0) die(path);
    struct bind_iommufd b = {.argsz = sizeof b, .iommufd = mapfd};
    if (ioctl(devfd, BIND_IOMMUFD, &b)) die("VFIO_DEVICE_BIND_IOMMUFD");
    struct attach_pt at = {.argsz = sizeof at, .pt_id = ioas};
    if (ioctl(devfd, ATTACH_PT, &at)) die("VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  }
  size_t huge = 2 << 20;
  char *raw = mmap(NULL, size + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) die("mmap");
  char *buf = thp ? (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1)) : raw;
  if (thp) madvise(buf, size, MADV_HUGEPAGE);
  for (size_t i = 0; i < size; i += 4096) buf[i] = 1;
  uint64_t base = 4 << 20;  // same IOVA as vfio-map-bench on q35 (first range starts at 0)
  printf("{\"tool\":\"map_bench.c\",\"device\":\"%s\",\"backend\":\"%s\",\"size\":%zu,\"backing\":\"%s\",\"results\":[",
         bdf, legacy ? "legacy" : "iommufd", size, thp ? "transparentHugePages" : "normal");
  char *list = argv[4];
  int first = 1;
  for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
    size_t chunk = strtoull(tok, NULL, 0);
    if (chunk == 0) chunk = size;
    size_t calls = 0;
    uint64_t t0 = now_ns();
    for (size_t off = 0; off < size; off += chunk, calls++) map((uintptr_t)buf + off, base + off, chunk);
    uint64_t t1 = now_ns();
    for (size_t off = 0; off < size; off += chunk) unmap(base + off, chunk);
    uint64_t t2 = now_ns();
    printf("%s{\"chunk\":%zu,\"calls\":%zu,\"map_ns\":%llu,\"unmap_ns\":%llu}", first ? "" : ",", chunk, calls,
           (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    first = 0;
  }
  printf("]}\n");
  close(devfd);
  return 0;
}
