/*
 * tor-sets: a setrlimit shim for Falco's modern eBPF probe, loaded with the dynamic loader's --preload.
 *
 * libpman raises RLIMIT_MEMLOCK to infinity before loading its BPF programs and gives up when that fails with
 * EPERM. Where the process tree's hard limit is low and CAP_SYS_RESOURCE is not in the bounding set (some
 * sandboxes and CI runners), nothing can raise it; but kernels >= 5.11 charge BPF memory to the memory cgroup,
 * not to RLIMIT_MEMLOCK, so the limit is irrelevant. This shim turns exactly that failure (EPERM on
 * RLIMIT_MEMLOCK) into success and leaves every other call alone. tor-sets loads it only when it has checked
 * that the limit cannot be raised and the kernel is new enough.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);
typedef int (*setrlimit64_fn)(__rlimit_resource_t, const struct rlimit64 *);

int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit) {
	static setrlimit_fn real;
	if(real == NULL) {
		real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
		if(real == NULL) {
			errno = ENOSYS;
			return -1;
		}
	}
	int rc = real(resource, limit);
	if(rc != 0 && errno == EPERM && resource == RLIMIT_MEMLOCK) {
		errno = 0;
		return 0;
	}
	return rc;
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *limit) {
	static setrlimit64_fn real;
	if(real == NULL) {
		real = (setrlimit64_fn)dlsym(RTLD_NEXT, "setrlimit64");
		if(real == NULL) {
			errno = ENOSYS;
			return -1;
		}
	}
	int rc = real(resource, limit);
	if(rc != 0 && errno == EPERM && resource == RLIMIT_MEMLOCK) {
		errno = 0;
		return 0;
	}
	return rc;
}
